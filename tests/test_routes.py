"""The router: which policies a request matches."""

from __future__ import annotations

import pytest

from admission.ratelimit.routes import Router


def router(*routes: tuple[str, list[str]]) -> ListRouter:
    return ListRouter([(name, patterns) for name, patterns in routes])


class ListRouter(Router[str]):
    """ListRouter answers lists, which read better in assertions."""

    def match(self, method: str, path: str) -> list[str]:  # type: ignore[override]
        return list(super().match(method, path))


@pytest.mark.parametrize(
    ("pattern", "method", "path", "matches"),
    [
        ("POST /login", "POST", "/login", True),
        ("POST /login", "GET", "/login", False),
        ("POST /login", "POST", "/login/", False),
        ("POST /login", "POST", "/logins", False),
        ("/login", "DELETE", "/login", True),
        ("/api/*", "GET", "/api/", True),
        ("/api/*", "GET", "/api/v1/users", True),
        ("/api/*", "GET", "/api", False),
        ("/api/*", "GET", "/apiary", False),
        ("/api*", "GET", "/apiary", True),
        ("GET /api/*", "POST", "/api/x", False),
        ("/users/{id}", "GET", "/users/42", True),
        ("/users/{id}", "GET", "/users/", False),
        ("/users/{id}", "GET", "/users/42/posts", False),
        ("/users/{id}/posts", "GET", "/users/42/posts", True),
        ("/users/{id}/posts", "GET", "/users/42/comments", False),
        ("/{tenant}/export", "GET", "/acme/export", True),
        ("/{tenant}/export", "GET", "/acme/import", False),
        ("PUT /{a}/{b}", "PUT", "/x/y", True),
        ("PUT /{a}/{b}", "PUT", "/x", False),
        ("*", "PATCH", "/anything/at/all", True),
        ("GET *", "POST", "/anything", False),
        ("/", "GET", "/", True),
        ("/", "GET", "/x", False),
    ],
)
def test_a_pattern_matches_what_it_says(
    pattern: str, method: str, path: str, matches: bool
) -> None:
    assert router(("p", [pattern])).match(method, path) == (["p"] if matches else [])


def test_every_matching_policy_applies_once_in_the_order_given() -> None:
    r = router(
        ("login", ["POST /login", "/login"]),
        ("all", ["*"]),
        ("prefix", ["/lo*"]),
        ("template", ["/{page}"]),
        ("other", ["/logout"]),
    )
    assert r.match("POST", "/login") == ["login", "all", "prefix", "template"]
    assert r.match("GET", "/logout") == ["all", "prefix", "template", "other"]
    assert r.match("GET", "/a/b") == ["all"]


def test_no_policy_matches_an_empty_router() -> None:
    assert router().match("GET", "/") == []


def test_a_thousand_literal_paths_each_find_their_own_policy() -> None:
    r = router(*((f"p{i}", [f"GET /items/{i}"]) for i in range(1000)))
    assert all(r.match("GET", f"/items/{i}") == [f"p{i}"] for i in range(1000))
    assert r.match("GET", "/items/1000") == []
    assert r.match("POST", "/items/1") == []


def test_hostile_paths_match_nothing_and_cost_little() -> None:
    r = router(("t", ["/users/{id}"]), ("p", ["/api/*"]))
    long = "/" + "a/" * 50_000
    assert r.match("GET", long) == []
    assert r.match("GET", "/users/" + "x" * 100_000) == ["t"]
    assert r.match("GET", "") == []
    assert r.match("", "/api/\x00\xff") == ["p"]
