"""Email writing: a short email from a recipient, a subject and key points; scored with a rubric.

    from scalelab.lm.posttrain.tasks.emails import EmailTask
    EmailTask().train_conversations(1, seed=0)[0][0]["content"]
    # 'Write a short email to Maria from Sam.\\nSubject: Lunch plans\\nKey points: lunch is on Friday; ...'

Examples are synthetic, drawn from templates with a seeded RNG (names, scenarios, days, times, places), so there are
millions of distinct ones; train/eval are split by a hash of (recipient, subject, key points). The rubric gives
one third each for greeting the recipient by name on the first line, mentioning every key point (the share of
points whose content words all appear) and signing off with a closing phrase at the end.
"""

from __future__ import annotations

import random
import re

from scalelab.lm.posttrain.tasks.base import Example, Messages, Task, is_eval_key, split_end, words

NAMES = ["Maria", "James", "Aisha", "Chen", "Olga", "Pedro", "Fatima", "Liam", "Yuki", "Noah", "Emma", "Ravi",
         "Sofia", "Omar", "Grace", "Lucas", "Mei", "Daniel", "Amara", "Jonas", "Priya", "Tom", "Elena", "Kofi",
         "Hannah", "Mateo", "Zara", "Ben", "Ingrid", "Sam", "Nina", "Leo", "Ana", "Victor", "Ruth", "Ali"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
TIMES = ["9 am", "10 am", "11 am", "noon", "1 pm", "2 pm", "3 pm", "4 pm", "5 pm", "6 pm"]
ROOMS = ["A", "B", "C", "12", "204", "310"]
FOODS = ["pizza", "sushi", "salad", "curry", "taco", "noodle", "sandwich"]
THINGS = ["report", "slides", "budget", "move", "launch", "workshop", "survey", "website"]
PLACES = ["the park", "the library", "the station", "the cafe", "the front desk", "the main hall"]

# subject -> key-point templates (2-3 are picked per email)
SCENARIOS: dict[str, list[str]] = {
    "Team meeting": ["the meeting moves to {day}", "it starts at {time}", "we meet in room {room}",
                     "please bring your notes", "the agenda is the {thing}"],
    "Lunch plans": ["lunch is on {day}", "we go to the {food} place", "we leave at {time}", "I will book a table"],
    "Project deadline": ["the {thing} is due on {day}", "send me your draft by {time}", "ask me if you need help",
                         "we review it together on {day}"],
    "Thank you": ["thank you for your help with the {thing}", "it went very well", "lunch is on me next {day}"],
    "Office closed": ["the office is closed on {day}", "please work from home that day", "the office opens at {time}"],
    "Birthday party": ["the party is on {day}", "it starts at {time}", "please bring a {food} dish",
                       "we meet at {place}"],
    "Package delivery": ["your package arrived on {day}", "it is at {place}", "pick it up before {time}"],
    "Sick day": ["I am sick today", "I will miss the meeting at {time}", "I hope to be back on {day}"],
    "Book club": ["book club is on {day}", "we meet at {place}", "it starts at {time}", "bring a snack"],
    "Schedule change": ["the {thing} review moves to {day}", "the new time is {time}", "the room is {room}"],
}
GREETINGS = ["Hi {name},", "Hello {name},", "Dear {name},", "Hey {name},"]
CLOSINGS = ["Best,", "Best regards,", "Thanks,", "Cheers,", "Kind regards,", "See you soon,", "Many thanks,"]
OPENERS = ["", "", "I hope you are well. ", "Quick note. ", "I hope your week is going well. "]

_GREETING = re.compile(r"^\s*(hi|hello|dear|hey|good (morning|afternoon|evening))\b", re.IGNORECASE)
_CLOSING = re.compile(r"\b(best|regards|thanks|thank you|cheers|sincerely|see you|talk soon|take care|warmly|"
                      r"all the best|yours)\b", re.IGNORECASE)
STOPWORDS = {"the", "a", "an", "is", "it", "on", "at", "to", "in", "of", "for", "we", "i", "me", "my", "you",
             "your", "and", "by", "if", "be", "will", "that", "please", "are", "am", "with", "next"}


def _sentence(point: str) -> str:
    return point[0].upper() + point[1:] + "."


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if w not in STOPWORDS]


class EmailTask(Task):
    """Short emails with a greeting, one sentence per key point, and a sign-off."""

    name = "email"
    few_shot_stop = ("\n\nQuestion:",)
    few_shot_k = 2

    def __init__(self, eval_percent: int = 10) -> None:
        self.eval_percent = eval_percent

    def _spec(self, rng: random.Random) -> dict:
        recipient, sender = rng.sample(NAMES, 2)
        subject = rng.choice(sorted(SCENARIOS))
        templates = rng.sample(SCENARIOS[subject], rng.randint(2, min(3, len(SCENARIOS[subject]))))
        fill = {"day": rng.choice(DAYS), "time": rng.choice(TIMES), "room": rng.choice(ROOMS),
                "food": rng.choice(FOODS), "thing": rng.choice(THINGS), "place": rng.choice(PLACES)}
        points = [t.format(**fill) for t in templates]
        return {"recipient": recipient, "sender": sender, "subject": subject, "points": points}

    @staticmethod
    def prompt(spec: dict) -> str:
        return (f"Write a short email to {spec['recipient']} from {spec['sender']}.\nSubject: {spec['subject']}\n"
                f"Key points: {'; '.join(spec['points'])}")

    @staticmethod
    def write(spec: dict, rng: random.Random) -> str:
        body = rng.choice(OPENERS) + " ".join(_sentence(p) for p in spec["points"])
        return (f"{rng.choice(GREETINGS).format(name=spec['recipient'])}\n\n{body}\n\n"
                f"{rng.choice(CLOSINGS)}\n{spec['sender']}")

    def _draw(self, n: int, seed: int, held_out: bool) -> list[tuple[dict, str]]:
        rng = random.Random(seed)
        out, seen = [], set()
        for _ in range(200 * n + 1000):
            if len(out) >= n:
                break
            spec = self._spec(rng)
            key = f"{spec['recipient']}|{spec['subject']}|{'|'.join(sorted(spec['points']))}"
            if is_eval_key(key, self.eval_percent, salt="email") != held_out or (held_out and key in seen):
                continue
            seen.add(key)
            out.append((spec, key))
        return out

    def train_conversations(self, n: int, seed: int = 0) -> list[Messages]:
        rng = random.Random(seed + 7)
        return [[{"role": "user", "content": self.prompt(spec)},
                 {"role": "assistant", "content": self.write(spec, rng)}]
                for spec, _ in self._draw(n, seed, held_out=False)]

    def eval_examples(self, n: int, seed: int = 0) -> list[Example]:
        return [Example(self.name, [{"role": "user", "content": self.prompt(spec)}], spec, key)
                for spec, key in self._draw(n, seed + 1, held_out=True)]

    def score(self, example: Example, completion: str) -> dict[str, float]:
        text, ended = split_end(completion)
        spec = example.reference
        lines = [ln.strip() for ln in text.strip().split("\n") if ln.strip()]
        first = lines[0] if lines else ""
        greets = bool(_GREETING.search(first)) and spec["recipient"].lower() in words(first)
        said = set(words(text))
        hits = [all(w in said for w in content_words(p)) for p in spec["points"]]
        points = sum(hits) / len(hits) if hits else 1.0
        tail = " ".join(lines[-2:]) if len(lines) >= 2 else ""
        signs_off = bool(_CLOSING.search(tail))
        score = (float(greets) + points + float(signs_off)) / 3
        return {"score": score, "greets": float(greets), "points": points, "signs_off": float(signs_off),
                "ended": float(ended)}
