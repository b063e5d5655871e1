"""quarklab.tldr: the Reddit TL;DR prompt layout: shortening for display keeps the head and the TL;DR tail."""

from __future__ import annotations

from quarklab.tldr import shorten as shorten_prompt


def test_shorten_prompt_keeps_head_and_tail():
    post = "SUBREDDIT: r/a\nTITLE: A title\nPOST: " + " ".join(f"w{i}" for i in range(500)) + "\nTL;DR:"
    short = shorten_prompt(post, 200)
    assert short.startswith("SUBREDDIT: r/a\nTITLE: A title\nPOST:") and short.endswith("\nTL;DR:")
    assert "…" in short and "w0" in short and "w499" in short and len(short) < 260
    assert shorten_prompt("short\nTL;DR:", 200) == "short\nTL;DR:"
