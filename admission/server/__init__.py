"""admission.server: everything specific to a server (uvicorn): its protocol, server,
listener, supervisor and `admission serve`."""
