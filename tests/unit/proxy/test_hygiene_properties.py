"""Property tests for header hygiene (DESIGN §4)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sidecar.vocab.headers import HOP_BY_HOP, end_to_end

TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
NAMES = st.one_of(
    st.sampled_from(sorted(HOP_BY_HOP)),
    TOKEN.map(lambda t: "proxy-" + t),
    TOKEN,
    st.sampled_from(["host", "x-request-id", "content-type", "x-keep"]),
)
VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)


@st.composite
def header_lists(draw: st.DrawFn) -> list[tuple[str, str]]:
    items = draw(st.lists(st.tuples(NAMES, VALUE), max_size=20))
    # Connection fields naming some of the other fields, in any case and spacing
    named = draw(st.lists(st.sampled_from([k for k, _ in items] or ["x"]), max_size=4))
    for _ in range(draw(st.integers(0, 2))):
        tokens = [draw(st.sampled_from([n, n.upper(), f"  {n} "])) for n in named] + draw(
            st.lists(st.sampled_from(["keep-alive", "close", ""]), max_size=2)
        )
        pos = draw(st.integers(0, len(items)))
        items.insert(pos, ("connection", ",".join(tokens)))
    return items


@given(header_lists())
def test_no_hop_by_hop_or_connection_named_field_survives(items):
    named = {
        t.strip().lower() for k, v in items if k == "connection" for t in v.split(",") if t.strip()
    }
    out = end_to_end(items)
    for k, _ in out:
        assert k not in HOP_BY_HOP
        assert not k.startswith("proxy-")
        assert k not in named


@given(header_lists())
def test_end_to_end_fields_are_kept_in_order_with_their_values(items):
    named = {
        t.strip().lower() for k, v in items if k == "connection" for t in v.split(",") if t.strip()
    }
    expected = [
        (k, v)
        for k, v in items
        if k not in HOP_BY_HOP and not k.startswith("proxy-") and k not in named
    ]
    assert end_to_end(items) == expected


@given(header_lists())
def test_hygiene_is_idempotent(items):
    once = end_to_end(items)
    assert end_to_end(once) == once
