"""The words redaction knows: spoken numbers, context keywords, units.

English is always on; Spanish words are added for ``es`` languages only
(``once`` is eleven in Spanish and an adverb in English). Every entry is
lower case with accents as recognisers write them; lookups strip
surrounding punctuation first (see :func:`siprecd.redact.tokens.bare`).
"""

# -- spoken numbers ------------------------------------------------------------
# Atom kinds (see siprecd.redact.tokens.spell): "d" a digit, "teen" a closed
# two-digit value (10-19, Spanish 21-29), "tens" 20-90 awaiting units,
# "hval" a hundreds value that takes tens/units (Spanish ciento, doscientos),
# "hundred"/"thousand" multipliers.

EN_NUMBER_WORDS = {
    "zero": ("d", 0), "nought": ("d", 0), "naught": ("d", 0), "nil": ("d", 0),
    "one": ("d", 1), "two": ("d", 2), "three": ("d", 3), "four": ("d", 4),
    "five": ("d", 5), "six": ("d", 6), "seven": ("d", 7), "eight": ("d", 8),
    "nine": ("d", 9),
    "ten": ("teen", 10), "eleven": ("teen", 11), "twelve": ("teen", 12),
    "thirteen": ("teen", 13), "fourteen": ("teen", 14), "fifteen": ("teen", 15),
    "sixteen": ("teen", 16), "seventeen": ("teen", 17), "eighteen": ("teen", 18),
    "nineteen": ("teen", 19),
    "twenty": ("tens", 20), "thirty": ("tens", 30), "forty": ("tens", 40),
    "fourty": ("tens", 40), "fifty": ("tens", 50), "sixty": ("tens", 60),
    "seventy": ("tens", 70), "eighty": ("tens", 80), "ninety": ("tens", 90),
    "hundred": ("hundred", 100), "thousand": ("thousand", 1000),
}

NUMBER_WORDS_EN = frozenset(EN_NUMBER_WORDS)

ES_NUMBER_WORDS = {
    "cero": ("d", 0), "uno": ("d", 1), "dos": ("d", 2), "tres": ("d", 3),
    "cuatro": ("d", 4), "cinco": ("d", 5), "seis": ("d", 6), "siete": ("d", 7),
    "ocho": ("d", 8), "nueve": ("d", 9),
    "diez": ("teen", 10), "once": ("teen", 11), "doce": ("teen", 12),
    "trece": ("teen", 13), "catorce": ("teen", 14), "quince": ("teen", 15),
    "dieciséis": ("teen", 16), "dieciseis": ("teen", 16), "diecisiete": ("teen", 17),
    "dieciocho": ("teen", 18), "diecinueve": ("teen", 19),
    "veintiuno": ("teen", 21), "veintiún": ("teen", 21), "veintidós": ("teen", 22),
    "veintidos": ("teen", 22), "veintitrés": ("teen", 23), "veintitres": ("teen", 23),
    "veinticuatro": ("teen", 24), "veinticinco": ("teen", 25),
    "veintiséis": ("teen", 26), "veintiseis": ("teen", 26),
    "veintisiete": ("teen", 27), "veintiocho": ("teen", 28), "veintinueve": ("teen", 29),
    "veinte": ("tens", 20), "treinta": ("tens", 30), "cuarenta": ("tens", 40),
    "cincuenta": ("tens", 50), "sesenta": ("tens", 60), "setenta": ("tens", 70),
    "ochenta": ("tens", 80), "noventa": ("tens", 90),
    "cien": ("hval", 100), "ciento": ("hval", 100),
    "doscientos": ("hval", 200), "doscientas": ("hval", 200),
    "trescientos": ("hval", 300), "trescientas": ("hval", 300),
    "cuatrocientos": ("hval", 400), "cuatrocientas": ("hval", 400),
    "quinientos": ("hval", 500), "quinientas": ("hval", 500),
    "seiscientos": ("hval", 600), "seiscientas": ("hval", 600),
    "setecientos": ("hval", 700), "setecientas": ("hval", 700),
    "ochocientos": ("hval", 800), "ochocientas": ("hval", 800),
    "novecientos": ("hval", 900), "novecientas": ("hval", 900),
    "mil": ("thousand", 1000),
}

# Zero said as a letter: a digit only next to another number word or digit
# ("oh four twenty six"), never in "oh I see". (A number's last "oh" before
# "wait" stays a digit: "... four three oh, and ..." may end a card.)
OH_WORDS = {"oh", "o"}
# "one" after these is a pronoun ("a different one", "the new one"), not a digit.
ONE_PRONOUN_AFTER = {
    "different", "new", "other", "another", "same", "old", "right", "wrong", "that", "this",
    "which", "each", "every", "no", "any", "little", "big", "blue", "black", "red", "only",
}
# Said inside a number being read, these mark a correction: the digits on
# each side of them are one number being read ("six oh double one, sorry I
# mean six oh one one", "sixty-five, no wait, sixty-four").
CORRECTION_MARKS = {"sorry", "mean", "meant", "wait", "actually", "scratch", "oops", "correction",
                    "rather", "no", "nope", "lo", "siento", "perdón", "perdon", "digo"}
CORRECTION_WORDS = CORRECTION_MARKS | {
    "i", "that", "that's", "let", "me", "start", "again", "it's", "it", "is", "hold", "on",
    "not", "right", "hang", "from", "the", "top", "beginning", "over", "um", "uh", "oh",
    "sorry", "ok", "okay", "so", "quiero", "decir", "es",
}
CORRECTION_MAX_WORDS = 6
# "double five" = 55; a digit only when a digit follows.
REPEAT_WORDS = {"double": 2, "triple": 3, "treble": 3, "doble": 2}
# What a recogniser writes for a digit it mis-hears: a digit only between
# two number tokens ("four one one for one"), never in "waiting for 20".
HOMOPHONES = {"for": 4, "fore": 4, "to": 2, "too": 2, "won": 1, "ate": 8}
# Inside a number these change nothing and do not end it.
FILLERS = {
    "uh", "um", "umm", "uhm", "uhh", "er", "erm", "ah", "ahh", "hmm", "mm", "mhm", "eh",
    "dash", "hyphen", "slash", "space", "-", "/", "–", "—", "este", "guion", "guión",
}
# "and" / "y" only inside a spoken compound ("one hundred and five", "treinta y uno").
AND_WORDS = {"and": "en", "y": "es"}
PLUS_WORDS = {"plus", "más", "mas"}

# Between the month and the year of an expiry ("eleven of thirty two").
EXPIRY_JOINERS = {"of", "de", "del"}

MONTHS = {
    "january": 1, "jan": 1, "february": 2, "feb": 2, "march": 3, "mar": 3, "april": 4,
    "apr": 4, "may": 5, "june": 6, "jun": 6, "july": 7, "jul": 7, "august": 8, "aug": 8,
    "september": 9, "sept": 9, "sep": 9, "october": 10, "oct": 10, "november": 11,
    "nov": 11, "december": 12, "dec": 12,
    "enero": 1, "febrero": 2, "marzo": 3, "abril": 4, "mayo": 5, "junio": 6, "julio": 7,
    "agosto": 8, "septiembre": 9, "setiembre": 9, "octubre": 10, "noviembre": 11,
    "diciembre": 12,
}
# A month counts as part of a number only next to one, in card context
# ("expires april 2026"): "may" and "march" are everyday words too.

# -- context -------------------------------------------------------------------
# Context kinds: "card" (a payment card is being talked about), "secret"
# (a CVV, PIN, expiry, passcode is asked for or given), "ssn", "phone";
# and what the secret or number is, when the words say ("expiry", "cvv",
# "pin", "account").
CARD, SECRET, SSN, PHONE = "card", "secret", "ssn", "phone"
EXPIRY, CVV, PIN, ACCOUNT = "expiry", "cvv", "pin", "account"
# "id": what is asked for is an identifier, a place or a date that is not
# sensitive ("and the billing zip code for that card", "what's the order
# number", "date of birth"): the answer is not masked by context.
ID = "id"
# "email": an e-mail address is asked for or given.
EMAIL = "email"
# "money": the utterance speaks of an amount ("your total comes to").
MONEY = "money"
# Context kinds that ask for something sensitive.
SENSITIVE = frozenset({CARD, SECRET, SSN, PHONE})

# Phrases (tuples of words) -> kinds. Single words are one-tuples.
_CVV = {SECRET, CARD, CVV}
_EXPIRY = {SECRET, CARD, EXPIRY}
CONTEXT_PHRASES = {
    # card
    ("card",): {CARD}, ("cards",): {CARD}, ("credit",): {CARD}, ("debit",): {CARD},
    ("visa",): {CARD}, ("mastercard",): {CARD}, ("master", "card"): {CARD},
    ("amex",): {CARD}, ("american", "express"): {CARD}, ("discover", "card"): {CARD},
    ("long", "number"): {CARD}, ("sixteen", "digits"): {CARD}, ("16", "digits"): {CARD},
    ("fifteen", "digits"): {CARD}, ("15", "digits"): {CARD},
    ("tarjeta",): {CARD}, ("crédito",): {CARD}, ("credito",): {CARD},
    ("débito",): {CARD}, ("debito",): {CARD},
    # accounts
    ("account", "number"): {CARD, ACCOUNT}, ("routing",): {CARD, ACCOUNT},
    ("número", "de", "cuenta"): {CARD, ACCOUNT},
    # secrets that belong to a card
    ("cvv",): _CVV, ("cvc",): _CVV, ("cvv2",): _CVV, ("cvc2",): _CVV, ("cid",): _CVV,
    ("csc",): _CVV, ("c", "v", "v"): _CVV, ("c", "v", "c"): _CVV,
    ("security", "code"): _CVV, ("security", "number"): _CVV, ("security", "digits"): _CVV,
    ("on", "the", "back"): _CVV,
    ("expiry",): _EXPIRY, ("expiration",): _EXPIRY, ("expires",): _EXPIRY,
    ("expire",): _EXPIRY, ("exp",): _EXPIRY, ("expiring",): _EXPIRY, ("expired",): _EXPIRY,
    ("valid", "thru"): _EXPIRY, ("valid", "through"): _EXPIRY, ("good", "thru"): _EXPIRY,
    ("good", "through"): _EXPIRY,
    ("last", "four"): {SECRET, CARD}, ("last", "4"): {SECRET, CARD},
    ("ending", "in"): {SECRET, CARD}, ("ends", "in"): {SECRET, CARD},
    ("vencimiento",): _EXPIRY, ("caducidad",): _EXPIRY,
    ("vence",): _EXPIRY, ("expira",): _EXPIRY,
    ("código", "de", "seguridad"): _CVV, ("codigo", "de", "seguridad"): _CVV,
    ("últimos", "cuatro"): {SECRET, CARD}, ("ultimos", "cuatro"): {SECRET, CARD},
    ("últimos", "4"): {SECRET, CARD}, ("ultimos", "4"): {SECRET, CARD},
    # secrets of their own
    ("pin",): {SECRET, PIN}, ("nip",): {SECRET, PIN}, ("passcode",): {SECRET, PIN},
    ("pass", "code"): {SECRET, PIN}, ("password",): {SECRET, PIN},
    ("access", "code"): {SECRET, PIN}, ("verification", "code"): {SECRET, PIN},
    ("verification", "number"): {SECRET, PIN}, ("one", "time", "code"): {SECRET, PIN},
    ("otp",): {SECRET, PIN}, ("digits",): {SECRET}, ("digit", "code"): {SECRET},
    ("contraseña",): {SECRET, PIN}, ("clave",): {SECRET, PIN},
    ("dígitos",): {SECRET}, ("digitos",): {SECRET},
    # identity numbers
    ("social",): {SSN}, ("ssn",): {SSN}, ("s", "s", "n"): {SSN},
    ("social", "security"): {SSN}, ("seguro", "social"): {SSN}, ("itin",): {SSN},
    ("tax", "id"): {SSN}, ("taxpayer",): {SSN}, ("tax", "identification"): {SSN},
    # phones
    ("phone",): {PHONE}, ("telephone",): {PHONE}, ("cell",): {PHONE},
    ("cellphone",): {PHONE}, ("mobile",): {PHONE}, ("landline",): {PHONE},
    ("fax",): {PHONE}, ("callback",): {PHONE}, ("call", "back"): {PHONE},
    ("call", "me"): {PHONE}, ("reach", "me"): {PHONE}, ("reach", "you"): {PHONE},
    ("text", "me"): {PHONE}, ("area", "code"): {PHONE}, ("teléfono",): {PHONE}, ("telefono",): {PHONE},
    ("celular",): {PHONE}, ("móvil",): {PHONE}, ("movil",): {PHONE},
    # e-mail
    ("email",): {EMAIL}, ("e-mail",): {EMAIL}, ("mail",): {EMAIL}, ("emails",): {EMAIL},
    ("correo",): {EMAIL}, ("inbox",): {EMAIL},
}
# Words of a question about an identifier, a place or a date (see ID).
ID_ASKS = {
    "zip", "postal", "street", "address", "order", "confirmation", "tracking", "reference",
    "member", "group", "claim", "invoice", "extension", "apartment", "suite", "room",
    "flight", "ticket", "birth", "birthday", "born", "serial", "model", "item",
    "sku", "policy", "student", "employee", "prescription", "rx", "booking",
    "pedido", "orden", "factura", "nacimiento", "dirección", "direccion", "postal",
}
# "code" and "number" alone are context unless a word before says otherwise
# ("zip code", "order number").
CODE_WORDS = {"code", "código", "codigo"}
NUMBER_WORDS = {"number", "número", "numero"}
NOT_SECRET_CODE = {
    "zip", "area", "postal", "promo", "promotional", "discount", "coupon", "country",
    "dial", "confirmation", "tracking", "reference", "referral", "gift", "bar", "qr",
    "dress", "error", "source", "tax",
}

# Words of an utterance about an amount: card context from earlier
# utterances does not reach its numbers.
MONEY_WORDS = {"total", "amount", "balance", "owe", "payments", "price", "costs", "fee",
               "comes", "saldo", "monto", "total", "precio"}
# A question on another topic ends card context from earlier utterances.
TOPIC_WORDS = {
    "address", "street", "zip", "postal", "email", "e-mail", "birthday", "born", "birth",
    "name", "spell", "amount", "total", "balance", "order", "delivery", "shipping",
    "payments", "owe", "price", "fee",
    "dirección", "direccion", "correo", "nombre", "cumpleaños",
}

# Identifiers that are not secrets: a number right after one of these is not
# card/secret context ("order number 1234", "apartment 305").
ID_WORDS = {
    "order", "confirmation", "tracking", "reference", "ref", "ticket", "case", "claim",
    "invoice", "flight", "room", "apartment", "apt", "suite", "unit", "extension", "ext",
    "page", "step", "option", "version", "model", "serial", "item", "sku", "policy",
    "member", "zip", "postal", "floor", "gate", "seat", "route", "highway", "channel",
    "pedido", "orden", "factura", "apartamento", "piso", "extensión", "caso", "boleto",
    "vuelo", "score", "store", "tienda",
}
# A number right after one of these is a place, a year or an amount, not a
# code ("declined at 7 11", "since 2010", "a balance of 420", "charge 250").
NOT_CODE_BEFORE = {
    "at", "since", "of", "charge", "charged", "pay", "paid", "costs", "cost", "owe",
    "spent", "about", "around", "approximately", "roughly", "over", "under", "only",
    "for", "full", "process", "processed", "processing", "charging", "refund", "refunded",
    "after", "before", "until", "till", "by", "from", "between", "than", "plus", "minus",
    "desde", "cuesta", "pagar", "pagué", "pague", "por",
}
# Looked past for the word before a number.
DETERMINERS = {"the", "a", "an", "that", "this", "your", "my", "those", "these", "el", "la",
               "los", "las", "un", "una"}
# "in 2022", "in two days" (a year, a time); "ending in", "ends in" are not.
IN_WORDS = {"in", "en"}
ENDING = {"ending", "ends", "end", "termina", "terminada"}
# A number right before one of these is an amount.
AMOUNT_AFTER = {"charged", "plus", "each", "tax", "total", "apiece", "refunded", "off"}
# "five to seven business days", "two more weeks".
UNIT_QUALIFIERS = {"business", "working", "more", "extra", "other", "full", "whole", "calendar"}
# "... on the visa": what an amount is put on.
PAYMENT_WORDS = {"visa", "mastercard", "amex", "card", "discover", "account", "bill"}
# A number right after one of these (within three words) is an address.
STREET_BEFORE = {"calle", "avenida", "carrera", "colonia", "boulevard", "bulevar"}
# A number right before one of these is an amount, a time, a count.
UNIT_WORDS = {
    "dollars", "dollar", "bucks", "cents", "cent", "percent", "pesos", "peso", "euros",
    "euro", "pounds", "minutes", "minute", "mins", "hours", "hour", "hrs", "days", "day",
    "weeks", "week", "months", "month", "years", "year", "yrs", "times", "seconds",
    "second", "am", "pm", "a.m.", "p.m.", "o'clock", "oclock", "miles", "mile", "feet",
    "foot", "inches", "kids", "children", "people", "items", "calls", "gb", "mb",
    "kilos", "dólares", "dolares", "centavos", "minutos", "horas", "días", "dias",
    "semanas", "meses", "años", "anos", "veces", "points", "degrees",
    "bedrooms", "units", "pieces", "packages", "boxes", "orders", "tickets",
    "st", "nd", "rd", "th",
}
STREET_WORDS = {
    "street", "avenue", "ave", "road", "rd", "drive", "lane", "ln", "boulevard", "blvd",
    "way", "court", "ct", "place", "circle", "highway", "hwy", "parkway", "terrace",
    "trail", "calle", "avenida", "main", "north", "south", "east", "west", "n", "s", "e", "w",
}
CURRENCY_WORDS = {"$", "usd", "us$", "€", "£"}

# -- e-mail --------------------------------------------------------------------
AT_WORDS = {"at", "arroba", "@"}
DOT_WORDS = {"dot", "punto", "period", "."}
LOCAL_JOINERS = {"dot", "punto", "period", "underscore", "dash", "hyphen", "guion",
                 "guión", "_", "-", "."}
TLDS = {
    "com", "net", "org", "edu", "gov", "io", "co", "us", "uk", "mx", "es", "info", "biz",
    "ca", "de", "fr", "it", "me", "tv", "ai", "app", "dev", "mil", "int", "ar", "cl",
    "pe", "br",
}
MAIL_PROVIDERS = {
    "gmail", "yahoo", "hotmail", "outlook", "aol", "icloud", "live", "msn",
    "protonmail", "proton", "comcast", "att", "verizon", "me", "mac", "ymail",
}
# Words that are not the local part of an address even before "at".
NOT_LOCAL = {
    "is", "it's", "its", "it", "my", "email", "e-mail", "mail", "address", "the", "a",
    "an", "me", "us", "you", "him", "her", "them", "this", "that", "here", "there",
    "look", "looking", "be", "am", "are", "was", "were", "i", "i'm", "we", "they",
    "and", "or", "at", "send", "sent", "to", "from", "of", "on", "in", "home", "work",
    "least", "all", "once", "night", "noon", "school", "store", "office", "please",
    "so", "yes", "yeah", "no", "okay", "ok", "correo", "es", "mi", "el", "la", "con",
    "sure", "yep", "well", "right", "just", "also", "actually", "thanks", "hi", "hello",
    "then", "now", "like", "oh", "one", "that's", "he", "she", "he's", "she's", "works",
    "worked", "working", "job", "lives", "living", "stays", "staying", "shop", "shopping",
    "bought", "bank", "banking", "meet", "meeting", "arrive", "arrived", "stop", "stopped",
    "good", "great", "better", "best", "bad", "nothing", "something", "anything", "every",
    "should", "could", "would", "will", "can", "do", "does", "did", "has", "have", "had",
    "what's", "who", "where", "when", "how", "why", "which", "for", "with", "by", "about",
    "account", "number", "name", "called", "try", "use", "using", "found", "him", "sí", "si",
    "y", "o", "de", "en", "del", "pues", "bueno",
}
# Words of a question or an answer about an e-mail address: a mail
# provider alone ("john smith at gmail") is an address only after them.
EMAIL_WORDS = {"email", "e-mail", "mail", "emails", "inbox", "correo", "electrónico",
               "electronico", "gmail", "yahoo", "hotmail", "outlook"}

# What the other party says while someone reads a number out, without
# taking the turn ("uh huh", "okay go ahead"): a number goes on across it.
BACKCHANNEL = {
    "ok", "okay", "uh", "huh", "uh-huh", "mhm", "mm", "mmhmm", "mm-hmm", "hmm", "yes", "yeah",
    "yep", "right", "got", "it", "go", "ahead", "sure", "alright", "all", "thanks", "thank",
    "you", "great", "perfect", "continue", "i", "see", "so", "um", "next", "then", "fine",
    "good", "keep", "going", "on", "and", "sí", "si", "claro", "vale", "bueno", "ajá", "aja",
    "gracias", "adelante", "listo", "siga", "ok.",
}
BACKCHANNEL_MAX_WORDS = 4
