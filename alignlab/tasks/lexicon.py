"""Word lists of the sentiment task: the gold lexicons, negators, and the vocabulary of its text.

The lexicons define the gold reward, so they are plain data kept apart from the code that scores
and generates. The opener and neutral vocabulary must contain no lexicon word and no negator (a
test checks this), so the openers carry no sentiment and neutral continuations score exactly 0.
"""

from __future__ import annotations

POSITIVE = frozenset({
    "good", "great", "wonderful", "excellent", "amazing", "lovely", "delicious", "fantastic",
    "pleasant", "perfect", "superb", "nice", "kind", "friendly", "helpful", "fresh", "clean",
    "comfortable", "cozy", "tasty", "beautiful", "brilliant", "charming", "delightful", "enjoyable",
    "reliable", "solid", "smooth", "sturdy", "crisp", "generous", "impressive", "outstanding",
    "happy", "love", "loved", "enjoyed", "best", "spotless", "elegant", "stunning", "gorgeous",
    "satisfying", "recommend", "awesome", "flawless", "terrific", "marvelous", "pleased", "glad",
    "fun", "superior", "exceptional", "attentive", "tender", "vibrant",
})

NEGATIVE = frozenset({
    "bad", "awful", "terrible", "horrible", "poor", "disappointing", "disappointed", "bland",
    "stale", "dirty", "rude", "slow", "broken", "noisy", "boring", "dull", "flimsy", "greasy",
    "soggy", "burnt", "overpriced", "unhelpful", "unfriendly", "uncomfortable", "cramped", "smelly",
    "mediocre", "weak", "worst", "hate", "hated", "useless", "annoying", "frustrating", "unreliable",
    "faulty", "ugly", "messy", "tasteless", "dreadful", "clumsy", "buggy", "laggy", "leaky",
    "sticky", "confusing", "harsh", "lousy", "grim", "gross", "shabby", "sloppy", "tedious",
    "unpleasant", "upset", "regret",
})

# A token counts as a negator if it is one of these or ends in "n't" (isn't, didn't, won't, ...).
NEGATORS = frozenset({"not", "no", "never", "cannot"})

# Review openers (the prompts): "{dish} at {place}", "{product}'s {feature}", ...
PLACES = [
    "Marco's", "Luna Bistro", "the corner cafe", "the harbor diner", "Rosa's Kitchen",
    "the station bakery", "Kim's Noodle Bar", "the hotel restaurant", "Casa Verde",
    "the food truck on Main Street", "the airport lounge", "the Blue Door", "Taverna Eleni",
    "the student canteen", "Le Petit Four", "the night market",
]
DISHES = [
    "pasta", "soup", "coffee", "bread", "pizza", "salad", "curry", "dessert", "tea", "burger",
    "sushi", "cake", "omelette", "noodles", "steak", "lemonade",
]
PRODUCTS = [
    "phone", "laptop", "camera", "tablet", "speaker", "headset", "watch", "monitor", "keyboard",
    "router", "printer", "radio",
]
FEATURES = ["battery", "screen", "sound", "design", "price", "charger", "case", "manual", "setup", "buttons"]
HOTELS = [
    "Seaview Hotel", "Park Inn", "Hotel Aurora", "Mountain Lodge", "City Hostel", "Harbor Motel",
    "Riverside Suites", "Old Mill Inn",
]
HOTEL_PARTS = ["room", "bed", "breakfast", "pool", "lobby", "shower", "view", "staff", "wifi", "gym"]
WORKS = ["movie", "book", "play", "album", "series", "game", "podcast", "comic"]
WORK_PARTS = ["ending", "plot", "soundtrack", "first chapter", "cast", "dialogue", "pacing", "opening scene"]
ITEMS = ["shoes", "jacket", "backpack", "mattress", "sofa", "chair", "desk", "lamp", "mug", "kettle"]
STORES = ["the mall", "Hansen's", "the outlet store", "an online shop", "the market", "Okafor & Sons"]

# Continuations: sentiment words come from POSITIVE / NEGATIVE, the rest from these neutral lists.
ADVERBS = ["really", "very", "truly", "quite", "rather", "just", "so"]
NEUTRAL_VERBS = [
    "served", "delivered", "checked", "tried", "used", "ordered", "reviewed", "shown to us",
    "picked up", "handed over", "brought out", "set up",
]
TIMES = [
    "on a Tuesday", "last week", "after lunch", "in the morning", "during our trip",
    "before the weekend", "around noon", "by my brother", "on the second day", "late at night",
]
COLORS = ["brown", "white", "green", "gray", "yellow", "red"]
THINGS = ["receipt", "label", "card", "box", "note", "sticker", "tag", "ticket"]
