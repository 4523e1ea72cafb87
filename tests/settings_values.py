"""tests.settings_values: the raw values the settings tests and the command-line tests feed to
every field."""

from __future__ import annotations

# Variables that only make sense together with others: those others, set to good values.
NEEDS = {
    "burst": {"ADMISSION_RATE": "10/second"},
    "queue_timeout": {"ADMISSION_WINDOW": "8"},
    "max_waiters": {"ADMISSION_WINDOW": "8", "ADMISSION_QUEUE_TIMEOUT": "0.1"},
    "window_min": {"ADMISSION_WINDOW": "auto"},
    "window_max": {"ADMISSION_WINDOW": "auto"},
    "queue_order": {"ADMISSION_WINDOW": "8", "ADMISSION_QUEUE_TIMEOUT": "0.1"},
    "priority": {"ADMISSION_WINDOW": "8"},
    "buffer_body_total": {"ADMISSION_BUFFER_BODY": "1"},
    "shed_at": {"ADMISSION_WINDOW": "8", "ADMISSION_PRIORITY": "header:X-Priority"},
}

GARBAGE = [
    "1" * 310,
    "1" + "0" * 399,
    "1e308",
    "1e-300",
    "0.0000001",
    "-1",
    "-0",
    "+5",
    "1_0",
    "\u0663",  # ARABIC-INDIC DIGIT THREE
    "\uff11\uff12",  # FULLWIDTH 12
    "\u00b2",  # SUPERSCRIPT TWO
    "nan",
    "NaN",
    "inf",
    "-inf",
    "Infinity",
    "0",
    "0x10",
    "1e3",
    "9" * 20,
    "4294967297",
    "/",
    "/,/",
    "0.0.0.0/0",
    "::/0",
    "\x00",
    "\u200b",  # ZERO WIDTH SPACE
    "x" * 5000,
    "redis://:s3cret@h:6379/0#frag",
    "-1/second",
    "1/0 second",
]
