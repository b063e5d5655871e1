"""A synthetic Reddit TL;DR dataset, generated deterministically from a seed.

Posts follow the exact layout of ``CarperAI/openai_summarize_tldr``::

    SUBREDDIT: r/<sub>
    TITLE: <title>
    POST: <post>
    TL;DR:

Each post is built from a small set of facts (who, for how long, what happened, a
detail, a feeling, a question) wrapped in varied sentences and filler, so a model has
to find the facts to summarise them. Reference labels come in three levels of detail
(terse, medium, full), which gives the SFT model a spread of summary quality for Quark
to work on, and the reward something to prefer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# (role, pronoun subject, pronoun possessive)
ROLES = {
    "romance": [("boyfriend", "he", "his"), ("girlfriend", "she", "her"), ("husband", "he", "his"),
                ("wife", "she", "her"), ("fiance", "he", "his"), ("fiancee", "she", "her"),
                ("partner", "they", "their")],
    "family": [("mom", "she", "her"), ("dad", "he", "his"), ("sister", "she", "her"),
               ("brother", "he", "his"), ("cousin", "she", "her"), ("grandma", "she", "her"),
               ("stepdad", "he", "his"), ("uncle", "he", "his")],
    "friends": [("best friend", "she", "her"), ("roommate", "he", "his"), ("friend", "he", "his"),
                ("neighbor", "she", "her"), ("childhood friend", "he", "his"), ("classmate", "she", "her")],
    "work": [("boss", "he", "his"), ("coworker", "she", "her"), ("manager", "she", "her"),
             ("landlord", "he", "his"), ("client", "he", "his"), ("team lead", "she", "her")],
}

# (problem phrase in the present perfect / simple past, detail templates)
PROBLEMS = {
    "romance": [
        ("forgot my birthday", ["even after I reminded {obj} twice", "and went out with friends instead"]),
        ("reads my texts", ["while I sleep", "and gets angry about my friends"]),
        ("wants to move to {city}", ["for a new job", "without asking me first"]),
        ("stopped talking to me", ["after a small fight", "for three days"]),
        ("spends all {pos} money on video games", ["and can't pay rent", "and hides the bills"]),
        ("invited {pos} ex to our party", ["without telling me", "and flirted with them"]),
        ("lied about {pos} job", ["for {dur2}", "to my parents"]),
        ("wants an open relationship", ["out of nowhere", "after a trip to {city}"]),
        ("got a {pet} without asking me", ["even though I am allergic", "and left it with me"]),
        ("keeps talking about marriage", ["on every date", "in front of my family"]),
    ],
    "family": [
        ("won't stop calling me", ["every night at work", "about my weight"]),
        ("borrowed {amount} and never paid it back", ["for a car", "and now asks for more"]),
        ("sold my old {thing}", ["without asking", "for {amount}"]),
        ("doesn't like my {partner}", ["and says it at dinner", "because of {pos} job"]),
        ("wants me to move back home", ["to save money", "after college"]),
        ("read my diary", ["and told everyone", "when I was at school"]),
        ("skipped my graduation", ["for a work trip", "without a reason"]),
        ("keeps giving my kids candy", ["before bed", "after I said no"]),
    ],
    "friends": [
        ("ate my food again", ["from the fridge", "and lied about it"]),
        ("plays loud music at night", ["until 3am", "on work nights"]),
        ("owes me {amount}", ["for rent", "for a concert ticket"]),
        ("took my {thing} without asking", ["and broke it", "for a whole week"]),
        ("told my secret to everyone", ["at a party", "in our group chat"]),
        ("ghosted me", ["after I helped {obj} move", "for {dur2}"]),
        ("started dating my ex", ["a week after we broke up", "and hid it from me"]),
        ("never cleans the kitchen", ["for {dur2}", "and leaves dishes everywhere"]),
    ],
    "work": [
        ("took credit for my project", ["in a meeting", "in front of the CEO"]),
        ("wants me to work weekends", ["for no extra pay", "every month"]),
        ("won't give back my deposit", ["of {amount}", "after I moved out"]),
        ("yelled at me", ["in front of customers", "over a small mistake"]),
        ("cut my hours", ["to {hours} a week", "without notice"]),
        ("keeps texting me at night", ["about work", "on weekends"]),
        ("denied my raise", ["after {dur2} of overtime", "for the second time"]),
        ("entered my apartment", ["without notice", "while I was away"]),
    ],
}

SUBREDDITS = {
    "relationships": ["romance", "family", "friends"],
    "relationship_advice": ["romance", "friends"],
    "dating_advice": ["romance"],
    "AskReddit": ["friends", "family", "work"],
    "legaladvice": ["work"],
    "personalfinance": ["family", "work"],
    "tifu": ["friends", "romance"],
    "jobs": ["work"],
    "Advice": ["family", "friends", "work"],
    "offmychest": ["family", "romance", "friends"],
}

FEELINGS = ["hurt", "angry", "confused", "stressed", "sad", "betrayed", "annoyed", "anxious",
            "lost", "embarrassed", "frustrated", "worried"]
QUESTIONS = {
    "romance": ["should I break up", "how do I bring it up", "am I overreacting", "is this a red flag",
                "what should I do"],
    "family": ["how do I set boundaries", "am I wrong to be upset", "how do I talk to {obj}",
               "should I cut contact"],
    "friends": ["how do I confront {obj}", "should I end the friendship", "am I overreacting",
                "how do I get my money back"],
    "work": ["is this legal", "should I quit", "how do I handle this", "should I report {obj}"],
}
DURATIONS = ["2 months", "3 months", "6 months", "8 months", "1 year", "2 years", "3 years",
             "4 years", "5 years", "7 years", "10 years"]
DUR2 = ["two weeks", "a month", "three months", "half a year", "a year"]
CITIES = ["Denver", "Chicago", "Seattle", "Boston", "Austin", "Toronto", "London", "Berlin",
          "Dallas", "Portland", "Miami", "Phoenix"]
PETS = ["dog", "cat", "puppy", "kitten", "parrot", "rabbit"]
THINGS = ["car", "laptop", "guitar", "bike", "camera", "phone", "TV", "jacket", "console"]
PARTNERS = ["boyfriend", "girlfriend", "husband", "wife", "fiance"]
AMOUNTS = ["$200", "$300", "$500", "$800", "$1,000", "$1,500", "$2,000", "$3,000", "$5,000"]
HOURS = ["10 hours", "15 hours", "20 hours", "25 hours"]
JOBS = ["nurse", "teacher", "cashier", "student", "engineer", "waiter", "mechanic", "designer",
        "barista", "programmer", "accountant", "driver"]
NAMES = ["Sam", "Alex", "Chris", "Jamie", "Taylor", "Jordan", "Casey", "Morgan", "Riley", "Drew",
         "Pat", "Robin"]
FILLER = [
    "Throwaway for obvious reasons.", "Sorry for the formatting, I'm on mobile.",
    "I don't usually post here.", "This is going to be a long one, sorry.",
    "English is not my first language.", "Some background first.", "Long time lurker, first post.",
    "We live in {city}.", "I work as a {job}.", "I'm usually pretty calm about things.",
    "My friends say I should just let it go.", "I tried to talk about it once but it went badly.",
    "Everything else is going fine.", "I really care about {obj}.", "It has happened before.",
    "Nobody else seems to think it's a big deal.", "Thanks for reading this far.",
    "Edit: fixed some typos.", "I have been thinking about this all week.",
]


@dataclass(frozen=True)
class TLDRExample:
    subreddit: str
    prompt: str
    label: str


def _sub(text: str, slots: dict) -> str:
    return text.format(**slots)


def make_example(rng: random.Random) -> TLDRExample:
    """One synthetic post and its reference summary, from ``rng``."""
    subreddit = rng.choice(sorted(SUBREDDITS))
    domain = rng.choice(SUBREDDITS[subreddit])
    role, subj, pos = rng.choice(ROLES[domain])
    obj = {"he": "him", "she": "her", "they": "them"}[subj]
    problem, details = rng.choice(PROBLEMS[domain])
    slots = dict(city=rng.choice(CITIES), pet=rng.choice(PETS), thing=rng.choice(THINGS),
                 partner=rng.choice(PARTNERS), amount=rng.choice(AMOUNTS), hours=rng.choice(HOURS),
                 dur2=rng.choice(DUR2), job=rng.choice(JOBS), pos=pos, obj=obj)
    problem = _sub(problem, slots)
    detail = _sub(rng.choice(details), slots)
    dur = rng.choice(DURATIONS)
    feeling = rng.choice(FEELINGS)
    question = _sub(rng.choice(QUESTIONS[domain]), slots)
    age = rng.randint(17, 45)
    sex = rng.choice("MF")
    oage = max(16, age + rng.randint(-8, 8))
    osex = {"he": "M", "she": "F", "they": rng.choice("MF")}[subj]
    name = rng.choice(NAMES)

    title = rng.choice([
        f"My [{age}{sex}] {role} [{oage}{osex}] of {dur} {problem}",
        f"My {role} of {dur} {problem}, {question}?",
        f"Me ({age}{sex}) and my {role} ({oage}{osex}), {subj} {problem}",
        f"{role.capitalize()} {problem}. {question.capitalize()}?",
    ])
    know = "been together" if domain == "romance" else "known each other"
    facts = [
        rng.choice([f"My {role} ({name}, {oage}) and I have {know} for {dur}.",
                    f"So I ({age}{sex}) have a {role}, {name}, and we have {know} for {dur}.",
                    f"I have known my {role} for about {dur} now."
                    if domain != "romance" else f"My {role} and I have been together {dur}."]),
        rng.choice([f"Last week {subj} {problem} {detail}.",
                     f"A few days ago I found out that {subj} {problem} {detail}.",
                     f"The problem is that {subj} {problem} {detail}."]),
        rng.choice([f"I feel really {feeling} about it.", f"Honestly I am {feeling} and can't sleep.",
                    f"It makes me feel {feeling}."]),
    ]
    fillers = [_sub(f, slots) for f in rng.sample(FILLER, rng.randint(1, 4))]
    body = facts[:1] + fillers[: len(fillers) // 2] + facts[1:] + fillers[len(fillers) // 2:]
    body.append(rng.choice([f"So reddit, {question}?", f"{question.capitalize()}?",
                            f"What do you think, {question}?"]))
    post = " ".join(body)
    if rng.random() < 0.3:  # paragraph breaks, as real posts have
        cut = rng.randint(1, len(body) - 1)
        post = " ".join(body[:cut]) + "\n\n" + " ".join(body[cut:])
    prompt = f"SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:"

    level = rng.choice(["terse", "medium", "full"])
    if level == "terse":
        label = rng.choice([f"{role} {problem}.", f"my {role} {problem}, {question}?"])
    elif level == "medium":
        label = rng.choice([f"my {role} of {dur} {problem}, I feel {feeling}.",
                            f"{role} {problem} {detail}. {question}?"])
    else:
        label = rng.choice([f"my {role} of {dur} {problem} {detail} and I feel {feeling}. {question}?",
                            f"{role} ({oage}{osex}) of {dur} {problem} {detail}, I am {feeling}. {question}?"])
    return TLDRExample(subreddit, prompt, label)


def make_splits(seed: int = 0, sizes: dict[str, int] | None = None) -> dict[str, list[TLDRExample]]:
    """Disjoint splits of distinct prompts: ``{"train": [...], "valid": [...], "test": [...]}``."""
    sizes = sizes or {"train": 6000, "valid": 400, "test": 400}
    rng = random.Random(seed)
    seen: set[str] = set()
    out: dict[str, list[TLDRExample]] = {}
    for split, n in sizes.items():
        rows = []
        while len(rows) < n:
            ex = make_example(rng)
            if ex.prompt not in seen:
                seen.add(ex.prompt)
                rows.append(ex)
        out[split] = rows
    return out
