"""Benign training requests written for this project: text as it appears in images, and scary-sounding phrasing.

The request classifier learned "short imperative with a charged word = harmful" from the public sets, so
it flagged signs ("danger", "keep out"), slide titles and everyday questions with a violent verb. These
rows teach what those sets lack. They are generated from templates below (our own wording, licence of
this project) and are **training data only**: the evaluation sets stay held out and are not drawn from
here (`benchmarks/fixtures/benign_text_images.jsonl`, `tests/fixtures/benign_scary_requests.txt`, the
`EVAL_FRACTION` share of the benign instructions). Two source families, so leave-sources-out holds each
out whole: `own_image_text` (signage, labels, menus, slides, notes, alone or after a question about the
image, marked as the input guard marks it) and `own_scary` (technical, historical, safety, fiction and
game requests with violent or criminal words).
"""

from __future__ import annotations

import itertools
import random

from .readers import _digest
from .records import HARMLESS, Example

#: Marker the input guard puts before the text it read from an image (`input_guard.compose_request`).
IMAGE_MARK = "[Text in the image]:"

_WARNINGS = ("CAUTION", "WARNING", "DANGER", "NOTICE", "ATTENTION", "STOP")
_HAZARDS = ("slippery steps", "hot surface do not touch", "low ceiling mind your head", "forklift traffic",
            "falling ice from roof", "deep water no lifeguard", "thin ice", "falling rocks", "construction site",
            "electrical panel authorised staff only", "moving machinery", "sharp blades", "flammable liquids",
            "loose gravel", "overhead work in progress", "hearing protection required", "trip hazard",
            "automatic doors", "uneven pavement", "steep drop", "keep hands clear", "laser in use",
            "radiation area", "chemical storage", "biohazard waste only", "guard dog on duty",
            "blasting zone", "poison ivy in this area", "rip tides", "wild animals do not feed")
_DIRECTIONS = ("No entry", "Do not enter", "Staff only", "Authorised personnel only", "Keep out",
               "Private property", "No trespassing", "Restricted area", "No smoking", "No open flames",
               "Exit", "Fire exit", "Fire assembly point", "Push bar to open", "Keep door closed",
               "Do not block", "Toilets", "Lifts", "Stairs", "Reception", "Way out", "Car park full",
               "Road closed", "Detour", "Men at work", "Slow down", "One way", "Give way", "No U-turn",
               "Bridge out ahead", "Quiet zone", "No photography", "No food or drink", "Shoplifters will be prosecuted",
               "CCTV in operation", "Trespassers will be prosecuted", "Beware of the dog", "Wash your hands",
               "Out of order", "Wet paint", "Mind the gap", "Gate closes at dusk", "Deliveries at rear")
_PLACES = ("Gate B12", "Terminal 2", "Platform 7", "Ward 4", "Room 210", "Level 3", "Car park C", "Bus stop 14",
           "City centre", "Harbour", "Museum", "Library", "Town hall", "Airport", "Hospital", "Stadium")
_FOODS = ("Chicken Tikka", "Fish and Chips", "Veggie Lasagne", "Beef Burrito", "Pad Thai", "Greek Salad",
          "Mushroom Soup", "Lamb Kebab", "Apple Crumble", "Cheesecake", "Latte", "Green Tea", "Lemonade",
          "Killer Wings", "Death by Chocolate", "Atomic Hot Sauce", "Bomb Pop", "Dragon Roll", "Suicide Fries",
          "Assassin Burger", "Poison Apple Cider", "Hell Fire Pizza")
_PRODUCTS = ("Keep out of reach of children", "For external use only", "Do not swallow", "Harmful if swallowed",
             "Store below 25°C", "Contains nuts", "Best before 12/2026", "Flammable: keep away from heat",
             "Corrosive", "Toxic to aquatic life", "Wear gloves when handling", "Do not mix with bleach",
             "Shake before use", "Dosage: 2 tablets every 6 hours", "Not for sale to persons under 18",
             "Pesticide: follow label directions", "Rat poison: place in bait stations only",
             "Contains alcohol", "Lithium battery: do not puncture", "Sharp: handle with care")
_SLIDES = ("Threat model overview", "Attack surface review", "Killing the legacy API", "Crushing Q4 targets",
           "Why our competitors will die", "Penetration test results", "Incident post-mortem",
           "Fraud detection pipeline", "How attackers phish our staff", "Malware trends 2025",
           "Security awareness training", "Lessons from the outage", "Weapons of the Roman legion",
           "Causes of the First World War", "The rise and fall of empires", "Drug discovery pipeline",
           "Firearm safety course", "Hunting season regulations", "Explosives in mining", "Poisonous plants of Europe",
           "Budget 2026", "Team offsite agenda", "Hiring plan", "Customer journey", "Market analysis",
           "Product roadmap", "Onboarding checklist", "Quarterly review", "Risk register", "Lessons learned")
_NOTES = ("Pick up kids at 4", "Dentist Tuesday 10am", "Call mum back", "Water the plants", "Pay rent",
          "Kill the lights before leaving", "Shoot the product photos Friday", "Destroy old drafts after review",
          "Hack day next week", "Attack plan for the exam: chapters 3-5", "Bury the cables under the patio",
          "Execute the migration script at midnight", "Terminate the unused servers", "Nuke the test database",
          "Steal ideas from last year's winners", "Bleach the white towels", "Poison control number on the fridge",
          "Burn the CD for grandpa", "Take out the trash", "Book flights to Rome")
_IMAGE_QUESTIONS = ("Read this to me.", "Can you transcribe the text?", "What is written here?",
                    "Translate the text into French.", "What does the label mean?", "Summarise this picture.",
                    "Is this sign real?", "Explain this notice.", "What language is this?",
                    "Where would I see a sign like this?", "Fix the spelling in this photo.",
                    "Describe the image.", "Turn this into a checklist.", "What is this slide about?",
                    "Make this note more polite.", "Help me understand this warning.")

_TECH_VERBS = ("kill", "terminate", "abort", "nuke", "destroy", "wipe out", "take down", "blow away")
_TECH_OBJECTS = ("a stalled Podman pod", "a runaway cron job", "a frozen Java thread", "a stuck SQL query",
                 "a stalled Node.js worker", "an orphaned tmux session", "a deadlocked database transaction",
                 "a bloated Git branch", "the cache of my web app", "a background job in PowerShell",
                 "a Kubernetes pod that won't stop", "a memory leak in my C++ code", "my own unit tests",
                 "the loading time of my website", "a CI pipeline that hangs", "an old virtual machine")
_TECH = ("How do I {verb} {obj}?", "What's the safest way to {verb} {obj}?", "Why can't I {verb} {obj}?")
_HISTORY_TOPICS = ("the Battle of Stalingrad", "the Hundred Years' War", "the fall of Constantinople",
                   "the bombing of Dresden", "the Cuban Missile Crisis", "the Spanish Civil War", "the Cold War arms race",
                   "the siege of Leningrad", "the Korean War", "the Napoleonic Wars", "the assassination of Julius Caesar",
                   "the Khmer Rouge", "the Mongol invasions", "the Thirty Years' War", "the Boer War",
                   "chemical weapons in the First World War", "the Trojan War legend", "the Vietnam War",
                   "the Holocaust", "the Crusades", "Viking raids", "piracy in the Caribbean",
                   "the Great Train Robbery", "Prohibition-era gangsters", "the Watergate scandal")
_HISTORY = ("What caused {t}?", "Summarise {t} for a school essay.", "What were the consequences of {t}?",
            "Why is {t} still studied today?", "Give me a timeline of {t}.")
_SAFETY = ("What should I do if I smell gas in my flat?", "How do I treat a minor kitchen burn?",
           "How do I check a smoke alarm works?", "How do I store bleach and ammonia safely apart?",
           "How can I recognise a phishing email?", "What should I do if someone is choking?",
           "How do I report a scam call?", "How do I set parental controls on a tablet?",
           "How often should a boiler be serviced?", "How do I use a fire extinguisher?",
           "How do I know if a snake bite is venomous?", "What should I do during an earthquake?",
           "How do I lock down my home Wi-Fi against intruders?", "How do I spot a counterfeit banknote?",
           "What should I do if my credit card is stolen?", "How do I dispose of old medicines safely?",
           "How do I safely handle a found syringe?", "What should I do if I witness a robbery?",
           "How can I tell if my drink has been spiked?", "How do I help a friend who talks about suicide?",
           "How do I keep my car from being broken into?", "How do I childproof a medicine cabinet?",
           "How do I make my passwords harder to crack?", "How do I recognise signs of radicalisation in teenagers?")
_FICTION_CHARACTERS = ("a detective", "a retired assassin", "a space pirate", "a dragon", "a vampire hunter",
                       "a war veteran", "a jewel thief", "a rebel soldier", "a zombie survivor", "a ghost")
_FICTION = ("Write a short story about {c} who finally finds peace.", "Write a poem from the point of view of {c}.",
            "Describe a tense scene where {c} is cornered in an abandoned warehouse.",
            "Give {c} a tragic backstory for my novel.", "Write the opening line of a thriller starring {c}.")
_GAMES = ("How do I defeat the final boss in Elden Ring?", "Best sniper spots on the Dust 2 map?",
          "How do I kill the Ender Dragon in Minecraft?", "How do I assassinate targets quietly in Hitman?",
          "What's the fastest way to rob the bank in GTA Online?", "How do I poison enemies in Skyrim?",
          "Tips to ambush opponents in paintball?",
          "How do I win a knife fight in Counter-Strike?", "How do I blow up the reactor in Fallout?",
          "How do I sink the battleship in the board game?", "Best strategy to conquer Europe in Risk?")
_EVERYDAY = ("How do I {v} {o}?",)
_EVERYDAY_PAIRS = (("smash", "a garlic clove"), ("slaughter", "my to-do list"), ("hammer", "a nail into brick"),
                   ("chop", "onions without crying"), ("gut", "a fish"), ("skin", "a tomato"), ("cut", "my own hair"),
                   ("burn", "calories fast"), ("starve", "a sourdough starter"), ("drown", "out traffic noise"),
                   ("trap", "heat in my greenhouse"), ("choke", "a motorbike engine"), ("whip", "cream by hand"),
                   ("beat", "egg whites"), ("shoot", "a wedding video"), ("fire", "a pottery kiln"),
                   ("bury", "tulip bulbs"), ("bleed", "a radiator"), ("torch", "a crème brûlée"), ("crush", "an interview"))


def image_text_phrases() -> list[str]:
    """Short texts as they appear in images: warnings, directions, menus, product labels, slide titles, notes."""
    out = [f"{w}: {h.upper() if w != 'NOTICE' else h.capitalize()}" for w, h in itertools.product(_WARNINGS, _HAZARDS)]
    out += [d.upper() for d in _DIRECTIONS] + list(_DIRECTIONS[::3])
    out += [f"{p.upper()} →" for p in _PLACES] + [f"← {p} 500 m" for p in _PLACES]
    rng = random.Random(1)
    for _ in range(40):
        dishes = rng.sample(_FOODS, 4)
        out.append("MENU " + " ".join(f"{d} {rng.randint(3, 19)}.{rng.choice(['00', '50', '95'])}" for d in dishes))
    out += [*_PRODUCTS, *_SLIDES, *(f"{s} 1. 2. 3." for s in _SLIDES[::2])]
    out += [f"Note: {n}" for n in _NOTES] + list(_NOTES)
    return out


def scary_requests() -> list[str]:
    """Benign requests phrased with violent or criminal words: technical, historical, safety, fiction, games."""
    out = [t.format(verb=v, obj=o) for t, v, o in itertools.product(_TECH, _TECH_VERBS, _TECH_OBJECTS)]
    out += [t.format(t=topic) for t, topic in itertools.product(_HISTORY, _HISTORY_TOPICS)]
    out += list(_SAFETY) + list(_GAMES)
    out += [t.format(c=c) for t, c in itertools.product(_FICTION, _FICTION_CHARACTERS)]
    out += [_EVERYDAY[0].format(v=v, o=o) for v, o in _EVERYDAY_PAIRS]
    return out


def own_image_text() -> list[Example]:
    """Each image phrase alone and after a question about the image (as the input guard composes them)."""
    out = []
    for i, phrase in enumerate(image_text_phrases()):
        group = f"own_image_text:{_digest(phrase)}"
        question = _IMAGE_QUESTIONS[i % len(_IMAGE_QUESTIONS)]
        out.append(Example(phrase, HARMLESS, None, "own_image_text", group, None, {"form": "image_text"}))
        out.append(Example(f"{question}\n{IMAGE_MARK} {phrase}", HARMLESS, None, "own_image_text", group, None, {"form": "combined"}))
    return out


def own_scary() -> list[Example]:
    """The scary-sounding benign requests."""
    return [Example(t, HARMLESS, None, "own_scary", f"own_scary:{_digest(t)}", None, {}) for t in scary_requests()]
