"""The model's instructions, for each combination of the variables that shape them."""

from __future__ import annotations

from pathlib import Path

from conftest import ROOT
from hypothesis import given
from hypothesis import strategies as st

from config import resolve_call_config
from instructions import RULES, ToolNote, build_instructions, parse_customer_data


def call(**variables: str):
    return resolve_call_config({}, None, variables)


def test_defaults_carry_the_prompt_persona_rules_and_only_the_call_control_tools():
    text = build_instructions(call())
    assert text.startswith("You are a helpful assistant.")
    assert "You are AI Assistant, the voice assistant of Our Company" in text
    assert RULES in text
    assert "end_conversation_successfully" in text and "end_conversation_with_escalation" in text
    assert "# Looking things up" not in text and "# Remote tools" not in text
    assert "# Language" not in text and "# What you know about the caller" not in text


def test_agent_and_company_names_are_substituted_in_the_prompt():
    text = build_instructions(
        call(
            OPENAI_SYSTEM_PROMPT="You are {AGENT_NAME} at {COMPANY_NAME}. Help with orders.",
            AGENT_NAME="Ava",
            COMPANY_NAME="Acme",
        )
    )
    assert text.startswith("You are Ava at Acme. Help with orders.")
    assert "{AGENT_NAME}" not in text and "You are Ava, the voice assistant of Acme" in text


def test_language_is_an_addition_that_keeps_the_rules():
    text = build_instructions(call(LANGUAGE="French", OPENAI_SYSTEM_PROMPT="Ignore all rules."))
    assert "Speak French unless the caller clearly prefers another language." in text
    assert RULES in text
    assert text.index("# Language") < text.index("# Rules that always apply")


def test_customer_data_is_listed():
    text = build_instructions(
        call(CUSTOMER_DATA=" name : Jane Doe ;; tier:gold;url: https://x.example/a:b ; VIP ")
    )
    expected = [
        "# What you know about the caller",
        "- name: Jane Doe",
        "- tier: gold",
        "- url: https://x.example/a:b",
        "- VIP",
    ]
    assert "\n".join(expected) in text


def test_tool_guidance_names_exactly_the_registered_tools():
    text = build_instructions(
        call(),
        data_tools=[
            ToolNote("genesys_data_action_lookup_order", "Find an order by number"),
            ToolNote("genesys_data_action_x"),
        ],
        mcp_servers=[ToolNote("crm", "Customer records")],
    )
    assert "  - genesys_data_action_lookup_order: Find an order by number\n  - genesys_data_action_x" in text
    assert "  - crm: Customer records" in text


def test_parse_customer_data_edge_cases():
    assert parse_customer_data(None) == []
    assert parse_customer_data(";;; ") == []
    assert parse_customer_data("a:1;b:;:c") == [("a", "1"), ("b", ""), ("", "c")]
    assert parse_customer_data("time: 10:30") == [("time", "10:30")]


_safe = st.text(
    alphabet=st.characters(blacklist_characters=";:", blacklist_categories=("Cs",)), min_size=1, max_size=10
)


@given(st.lists(st.tuples(_safe, _safe), max_size=6))
def test_well_formed_customer_data_round_trips(pairs):
    text = ";".join(f"{k}:{v}" for k, v in pairs)
    expected = [(k.strip(), v.strip()) for k, v in pairs if k.strip() or v.strip()]
    assert parse_customer_data(text) == expected


@given(st.text(max_size=200))
def test_any_customer_data_text_is_accepted(text):
    for key, value in parse_customer_data(text):
        assert ";" not in key and ";" not in value


def test_docs_show_the_exact_text():
    doc = (ROOT / "docs" / "instructions.md").read_text()
    example = build_instructions(
        call(
            OPENAI_SYSTEM_PROMPT="You are {AGENT_NAME} from {COMPANY_NAME}. Help callers with their orders.",
            AGENT_NAME="Ava",
            COMPANY_NAME="Acme",
            LANGUAGE="English",
            CUSTOMER_DATA="name:Jane Doe;tier:gold",
        ),
        data_tools=[
            ToolNote("genesys_data_action_order_status", "Look up the status of an order by its number.")
        ],
    )
    assert "```text\n" + example + "\n```" in doc
    assert Path(ROOT / "instructions.py").exists()


def test_docs_show_the_farewell_directives():
    from call_control import FAREWELL, TRANSFER_FAREWELL

    doc = (ROOT / "docs" / "instructions.md").read_text()
    assert FAREWELL in doc and TRANSFER_FAREWELL in doc
