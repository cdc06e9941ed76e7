"""What an episode summary may say: the user's statements (`user_statements`), whether a summary is
`grounded` in them, which of their facts it loses (`lost_facts`), and the extractive fallback.
Pure functions, tabled; how the summariser uses them is in test_episodes.py."""
from __future__ import annotations

import pytest

from agent.runtime.episodes import extractive_summary, grounded, lost_facts, user_statements


def _user(*texts):
    return [{"role": "user", "content": t} for t in texts]


@pytest.mark.parametrize("said, statements", [
    # questions, greetings, thanks, acknowledgements and requests state nothing
    ("Hello", []),
    ("hi there!", []),
    ("ok thanks, that's great", []),
    ("I see.", []),
    ("What is the Silver Stag?", []),
    ("who won the cup", []),
    ("Is Paris in France", []),
    ("Can you help me.", []),
    ("Tell me a joke.", []),
    ("Sure, tell me more.", []),
    ("Please remember my locker code.", []),
    # statements, what a request to remember names, the statement before a question
    ("My locker code is 7734. Please remember my locker code.", ["My locker code is 7734."]),
    ("Remember that my sister is Ana.", ["My sister is Ana."]),
    ("My gate code is 4412, please remember it.", ["My gate code is 4412."]),
    ("My code is 7734, can you remember it?", ["My code is 7734."]),
    ("I live in Oslo, what should I see?", ["I live in Oslo."]),
    ("Hi, I'm Sam! How are you?", ["I'm Sam!"]),
    ("Will is my brother.", ["Will is my brother."]),  # a name, not an auxiliary
    ("When I was ten, we moved to Oslo.", ["When I was ten, we moved to Oslo."]),
    ("I'm planning a trip to Lisbon in May.\nWhat should we eat there?", ["I'm planning a trip to Lisbon in May."]),
])
def test_user_statements(said, statements):
    assert user_statements(_user(said)) == statements


def test_user_statements_read_only_the_users_turns_once_each():
    messages = [{"role": "system", "content": "You are Ada."}, *_user("My cat is Miso."),
                {"role": "assistant", "content": "Miso is a 100-year-old name from Dunmere."},
                *_user("My cat is Miso.", "She is three."), {"role": "user", "content": [{"type": "text"}]}]
    assert user_statements(messages) == ["My cat is Miso.", "She is three."]


SAID = ["My locker code is 7734.", "I'm going to the Silver Stag next week."]


@pytest.mark.parametrize("summary, ok, why", [
    ("The user's locker code is 7734.", True, None),
    ("The user said their locker codes are 7734 and they are going to the Silver Stag.", True, None),
    ("The user is going to the Silver Stag next week.", True, None),
    ("The user mentioned that the 100-year-old Silver Stag is a historic landmark in Dunmere.", False,
     "a number the user never said: 100"),
    ("The user said the Silver Stag is in Dunmere.", False, "a name the user never said: Dunmere"),
    ("The user's locker code is 7735.", False, "a number the user never said: 7735"),
    ("The user mentioned a user's locker code, which is a common practice in the context of a conversation.",
     False, "only 40% of its words were said by the user (not: common, practice, context)"),
    ("The user mentioned that they said something.", False, "only 0% of its words were said by the user"),
    ("The user said that.", False, "nothing the user said"),
])
def test_grounded(summary, ok, why):
    result = grounded(summary, SAID)
    assert result[0] is ok and (result[1] or "").startswith(why or "")


@pytest.mark.parametrize("summary, lost", [
    ("The user's locker code is 7734 and they are going to the Silver Stag.", []),
    ("The user mentioned their locker code and a trip.", ["7734", "Silver", "Stag"]),
    ("The user's locker code is 7734.", ["Silver", "Stag"]),
])
def test_lost_facts(summary, lost):
    assert lost_facts(summary, SAID) == lost


def test_the_extractive_summary_quotes_what_fits_and_is_grounded():
    s = extractive_summary(['My locker code is 7734.', 'He said "hi".'])
    assert s == 'The user said: "My locker code is 7734." "He said \'hi\'."'
    assert grounded(s, ['My locker code is 7734.', 'He said "hi".']) == (True, None)
    assert len(extractive_summary(["x" * 500])) == 400 and extractive_summary(["x" * 500]).endswith('…"')
    assert extractive_summary(["a" * 300, "b" * 300, "c" * 20], max_chars=400).count('"') == 4  # a, c


def test_a_quoted_statement_stays_whole_and_a_wrapped_summary_is_unwrapped():
    from agent.runtime.episodes import check_summary

    quoted = 'The user said: "My cat Miso is three years old."'
    assert check_summary(quoted, "")[0] == quoted  # the extractive summary is already clean
    assert check_summary('"The user has a cat named Miso."', "")[0] == "The user has a cat named Miso."
