"""A test suite that calls Claude through RelayCache with the official
Anthropic SDK, and replays recorded answers offline.

Record once, with the provider reachable and relaycache in front of it:

    relaycache serve --config record.yaml        # cache.replay: off
    ANTHROPIC_BASE_URL=http://127.0.0.1:8787 python3 -m unittest test_summaries.py

Then replay, with no provider at all (in CI, on a plane):

    relaycache serve --config replay.yaml        # cache.replay: strict
    ANTHROPIC_BASE_URL=http://127.0.0.1:8787 python3 -m unittest test_summaries.py

The answers come from relaycache's reserve (a directory, or a bucket shared
by CI runners). A prompt that was never recorded fails fast with the SDK's
error naming the cause, instead of reaching the provider.
"""

import os
import unittest

import anthropic

MODEL = os.environ.get("SUMMARY_MODEL", "claude-sonnet-4-5")


def client() -> anthropic.Anthropic:
    # The SDK reads ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY.
    return anthropic.Anthropic(max_retries=0)


def ask(question: str) -> anthropic.types.Message:
    return client().messages.create(
        model=MODEL,
        max_tokens=64,
        messages=[{"role": "user", "content": question}],
    )


class Summaries(unittest.TestCase):
    def test_a_summary_has_text(self):
        answer = ask("Summarise: the cache answered before the provider did.")
        self.assertEqual(answer.role, "assistant")
        self.assertTrue(answer.content[0].text.strip())

    def test_the_same_question_gets_the_same_answer(self):
        first = ask("Name one reason to cache completions.")
        second = ask("Name one reason to cache completions.")
        self.assertEqual(first.content[0].text, second.content[0].text)


if __name__ == "__main__":
    unittest.main()
