"""Writes crates/core/tests/data/redaction_corpus.tsv: labelled texts for custos' PII redaction.

Each line: kind <TAB> text <TAB> the PII value the text holds (empty for a near-miss: a text that
looks like PII of that kind and must survive untouched). Deterministic (seeded); run it again
after adding templates: python3 bench/ai/make_redaction_corpus.py
"""
import random
import os

rng = random.Random(20261202)
rows = []


def luhn_complete(prefix, length):
    digits = [int(c) for c in prefix]
    while len(digits) < length - 1:
        digits.append(rng.randrange(10))
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    digits.append((10 - total % 10) % 10)
    return "".join(map(str, digits))


def iban(country, length):
    bban = "".join(str(rng.randrange(10)) for _ in range(length - 4))
    rearranged = bban + country + "00"
    num = int("".join(str(int(c, 36)) for c in rearranged))
    check = 98 - num % 97
    return f"{country}{check:02d}{bban}"


def spaced(s, n=4):
    return " ".join(s[i:i + n] for i in range(0, len(s), n))


def add(kind, text, pii=""):
    assert "\t" not in text and "\n" not in text
    rows.append((kind, text, pii))


names = ["ana", "bob.smith", "c.lee", "dmitri_k", "eve+alerts", "f.o'neil".replace("'", ""), "grace.hopper", "h.tanaka"]
domains = ["example.com", "acme.co.uk", "mail.example.org", "corp-net.io", "uni.edu", "startup.dev"]
contexts = ["Contact {} for access.", "Reset requested by {} yesterday.", "cc: {}", "<{}> wrote:", "user={} status=locked", "Escalate to {}, thanks"]

# E-mail: 30 positives, 30 near-misses
for i in range(30):
    e = f"{rng.choice(names)}{rng.randrange(100) if i % 3 == 0 else ''}@{rng.choice(domains)}"
    add("email", rng.choice(contexts).format(e), e)
for t in ["Use the @mention feature", "price is 5@10 units", "twitter handle @acme_support", "decorator @app.route('/x')",
          "file name report@2x.png", "meet at 10@room 4", "git@ version tag", "user@ without domain", "see docs @ example.com",
          "npm package @types/node", "@here please check", "email me at support (at) example (dot) com",
          "ratio 3@5", "scale@home", "foo@bar", "copy a@b", "handle @@@", "path /srv/data@v2", "key@", "@@user",
          "version pkg@1.2.3 installed", "ssh deploy@10", "tag release@2024", "query x@y", "weight 2@kg",
          "label note@", "snapshot db@2024-01-01", "ref commit@abc123", "channel #ops@", "mixed @ sign"]:
    add("email", t)

# Phone: 30 positives, 30 near-misses
phones = ["+1 415 555 2671", "+44 20 7946 0958", "+33 6 12 34 56 78", "+49 30 901820", "+81 3-1234-5678",
          "(415) 555-2671", "415-555-2671", "415.555.2671", "020 7946 0958", "06 12 34 56 78",
          "+1 (212) 555-0198", "+61 2 9374 4000", "+34 912 345 678", "030 901 820 00", "+39 06 6982 1234"]
for i in range(30):
    p = phones[i % len(phones)]
    add("phone", rng.choice(["Call me on {}.", "tel: {}", "Phone {} (mobile)", "reach support at {} anytime", "SMS sent to {}"]).format(p), p)
for t in ["version 10.2.3.4 released", "on 2024-01-15 at 10:30", "date 15/01/2024", "order 2024-001234-77",
          "invoice INV-20240115-0042", "amount 1,234,567.89", "port 5432 and 8080", "build 20240115.3",
          "uuid 550e8400-e29b-41d4-a716-446655440000", "range 100-200-300", "ticket #4155552671",
          "ISBN 978-3-16-148410-0", "timestamp 1700000000", "coordinates 48.8566 2.3522", "score 98.6 of 100",
          "id ORD-415-555-2671", "1.2.3", "room 12 34", "year 2024 2025 2026", "sku 00012345",
          "case no 2023 1234 5678", "po 4500012345", "hash 9f86d081884c7d65", "pi 3.14159265358",
          "counter 1 2 3 4 5 6 7 8", "release 2024.01.15", "dates 2024 01 15 12", "elapsed 12:30:45",
          "temperature -12.5 C", "page 10 of 20"]:
    add("phone", t)

# IPv4: 25 / 25
for i in range(25):
    ip = f"{rng.choice([10, 172, 192, 203, 8, 81])}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    add("ipv4", rng.choice(["login from {}", "client_ip={}", "blocked {} after 5 tries", "src {} dst gateway", "[{}] GET /"]).format(ip), ip)
for t in ["version 1.2.3", "v2.10.1.0 released", "semver 10.0.0", "ratio 1.5.6", "octets 300.1.2.3",
          "value 256.256.256.256", "decimal 3.14159", "build 4.2.0.1-rc", "date 2024.01.15", "amount 1.234.567",
          "file v1.2.3.4.tar", "chapter 1.2.3.4.5", "coordinates 48.85.66", "release 12.04", "score 9.5",
          "range 10.0-10.5", "rate 1.25%", "dns ns1.example.com", "size 1.5GB", "version 0.0.1",
          "section 4.3.2", "os 10.15.7", "node v18.17.1", "pkg 3.11.2", "api v2.1"]:
    add("ipv4", t)

# IPv6: 20 / 20
ip6 = ["2001:db8::8a2e:370:7334", "2001:0db8:85a3:0000:0000:8a2e:0370:7334", "fe80::1ff:fe23:4567:890a",
       "::1", "2001:db8:0:1::10", "fd12:3456:789a:1::1", "2606:4700:4700::1111", "::ffff:192.0.2.128",
       "2a00:1450:4001:81b::200e", "fe80::a00:27ff:fe4e:66a1"]
for i in range(20):
    a = ip6[i % len(ip6)]
    add("ipv6", rng.choice(["peer {} connected", "from [{}]:443", "addr={}", "blocked {}"]).format(a), a)
for t in ["time 12:30:45", "ratio 16:9", "at 09:15", "log 2024-01-15T10:30:00Z", "score 3:1",
          "duration 01:02:03:04", "bible John 3:16", "aspect 4:3", "clock 23:59:59", "match 2:2",
          "key value a:b", "std::vector", "scope a::b::c", "http://example.com:8080/", "C:\\Users",
          "mac 00:1a:2b:3c:4d:5e", "label x:y:z", "emoji :smile:", "url ftp://host:21", "cpu 0:1"]:
    add("ipv6", t)

# Cards: 25 / 25
card_specs = [("4", 16), ("4", 13), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15), ("6011", 16), ("3530", 16), ("36", 14)]
for i in range(25):
    pre, n = card_specs[i % len(card_specs)]
    num = luhn_complete(pre + "".join(str(rng.randrange(10)) for _ in range(max(0, 6 - len(pre)))), n)
    shown = spaced(num) if i % 3 == 0 else ("-".join(num[j:j + 4] for j in range(0, n, 4)) if i % 3 == 1 else num)
    add("card", rng.choice(["card {} charged", "PAN: {}", "paid with {} today", "cc={}"]).format(shown), shown)
for i in range(25):
    pre, n = card_specs[i % len(card_specs)]
    num = luhn_complete(pre + "123456", n)
    bad = num[:-1] + str((int(num[-1]) + 1) % 10)  # fails Luhn
    if i % 5 == 0:
        add("card", f"tracking {''.join(str(rng.randrange(10)) for _ in range(12))}")
    elif i % 5 == 1:
        add("card", f"account 9{''.join(str(rng.randrange(10)) for _ in range(15))}")
    else:
        add("card", rng.choice(["order {}", "ref {}", "card-like {}"]).format(spaced(bad)))

# IBAN: 20 / 20
for i in range(20):
    c, n = [("DE", 22), ("FR", 27), ("GB", 22), ("NL", 18), ("ES", 24), ("IT", 27)][i % 6]
    if c in ("GB", "NL"):
        raw = iban(c, n)
        raw = raw[:4] + ("NWBK" if c == "GB" else "ABNA") + raw[8:]
        # recompute check digits for the letters
        bban = raw[4:]
        num = int("".join(str(int(ch, 36)) for ch in bban + c + "00"))
        raw = f"{c}{98 - num % 97:02d}{bban}"
    else:
        raw = iban(c, n)
    shown = spaced(raw) if i % 2 == 0 else raw
    add("iban", rng.choice(["IBAN {}", "transfer to {} please", "account: {}"]).format(shown), shown)
for i in range(20):
    c, n = [("DE", 22), ("FR", 27), ("ES", 24)][i % 3]
    raw = iban(c, n)
    bad = raw[:2] + f"{(int(raw[2:4]) + 1) % 100:02d}" + raw[4:]
    add("iban", rng.choice(["ref {}", "code {}", "IBAN-like {}"]).format(spaced(bad) if i % 2 else bad))

# SSN: 20 / 20
for i in range(20):
    s = f"{rng.randrange(1, 899):03d}-{rng.randrange(1, 99):02d}-{rng.randrange(1, 9999):04d}"
    if s.startswith("666"):
        s = "123" + s[3:]
    add("ssn", rng.choice(["SSN {}", "ssn: {} on file", "social security number {}"]).format(s), s)
for t in ["000-12-3456", "666-12-3456", "912-12-3456", "123-00-4567", "123-45-0000", "2024-01-15", "12-345-6789",
          "1234-56-789", "part 123-456-789", "zip 12345-6789", "phone ext 123-45", "range 100-10-1000",
          "style 1-2-3", "ISBN 0-306-40615-2", "model 900-10-2000", "code 987-65-4321X", "id A123-45-6789",
          "serial 123-45-67890", "lot 12-34-5678", "ver 001-01-0001"]:
    add("ssn", f"value {t}" if not t.startswith(("part", "zip", "phone", "range", "style", "ISBN", "model", "code", "id", "serial", "lot", "ver")) else t)

# AWS keys: 15 / 15 each family
for i in range(15):
    k = rng.choice(["AKIA", "ASIA"]) + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16))
    add("aws_access_key", rng.choice(["aws_access_key_id = {}", "key {} leaked", "export AWS_ACCESS_KEY_ID={}"]).format(k), k)
for t in ["AKIA is a prefix", "AKIA123", "akiaiosfodnn7example lower", "AKIAIOSFODNN7EXAMPL short", "XKIAIOSFODNN7EXAMPLE",
          "ASIA region", "AKIA-IOSF-ODNN-7EXA", "model AKIAX", "ticket ASIA2024", "AIDA is a name",
          "AKIAIOSFODNN7EXAMPLEXX too long", "word AKIAS", "BKIAIOSFODNN7EXAMPLE", "code ASIAXYZ", "AKI AIOSFODNN7EXAMPLE"]:
    add("aws_access_key", t)
alnum = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
for i in range(15):
    k = "".join(rng.choice(alnum + "/+") for _ in range(40))
    k = k[:5] + "A" + k[6:10] + "b" + k[11:20] + "7" + k[21:]
    add("aws_secret_key", rng.choice(["aws_secret_access_key = {}", "secret {} in env", "AWS_SECRET_ACCESS_KEY={}"]).format(k), k)
for i in range(15):
    if i % 3 == 0:
        t = "sha1 " + "".join(rng.choice("0123456789abcdef") for _ in range(40))
    elif i % 3 == 1:
        t = "commit " + "".join(rng.choice("0123456789abcdef") for _ in range(40)).upper()
    else:
        t = "slug " + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(40))
    add("aws_secret_key", t)

# JWT and bearer: 15 / 15
import base64, json
def b64(d):
    return base64.urlsafe_b64encode(json.dumps(d).encode()).decode().rstrip("=")
for i in range(15):
    tok = b64({"alg": "HS256", "typ": "JWT"}) + "." + b64({"sub": f"user{i}", "tenant_id": f"t{i}", "exp": 4102444800}) + "." + "".join(rng.choice(alnum + "-_") for _ in range(43))
    if i % 2 == 0:
        add("jwt", f"Authorization header had {tok} in it", tok)
    else:
        add("jwt", f"token={tok}", tok)
for t in ["eyJ is base64 for {\"", "header eyJhbGciOi", "a.b.c", "file archive.tar.gz", "eyJ.eyJ.x", "jwt: <redacted>",
          "domain www.example.com", "version 1.2.3", "eyJhbGciOiJIUzI1NiJ9 alone", "json {\"alg\":\"none\"}",
          "module os.path.join", "abc.def.ghi", "ey.ey.ey", "eyJ1.eyJ2.eyJ3", "dotted a1.b2.c3"]:
    add("jwt", t)
for i in range(15):
    tok = "".join(rng.choice(alnum + "-._~") for _ in range(rng.randrange(24, 48)))
    add("bearer", f"Authorization: Bearer {tok}", tok)
for t in ["Bearer token missing", "the bearer of bad news", "Bearer short", "bearer bonds", "Bearer <token>",
          "use Bearer auth", "Bearer: none", "bearer 123", "Bearer ***", "Bearer abc def", "Bearer $TOKEN",
          "Authorization: Basic dXNlcjpwYXNz", "Bearer x", "bearers of the cup", "Bearer {{token}}"]:
    add("bearer", t)

# API keys: 15 / 15
for i in range(15):
    fam = i % 5
    if fam == 0:
        k = "sk-" + "".join(rng.choice(alnum) for _ in range(48))
    elif fam == 1:
        k = "ghp_" + "".join(rng.choice(alnum) for _ in range(36))
    elif fam == 2:
        k = "xoxb-" + "-".join("".join(rng.choice("0123456789") for _ in range(12)) for _ in range(2)) + "-" + "".join(rng.choice(alnum) for _ in range(24))
    elif fam == 3:
        k = "AIza" + "".join(rng.choice(alnum + "-_") for _ in range(35))
    else:
        k = "sk_live_" + "".join(rng.choice(alnum) for _ in range(24))
    add("api_key", rng.choice(["api_key={}", "key {} committed by mistake", "OPENAI_API_KEY={}"]).format(k), k)
for t in ["sk-short", "task sk-123", "ghp_tooshort", "xoxb-1", "AIza short", "sk_live_", "risk-assessment",
          "desk-123456", "skip-navigation-link-here", "ghp is a prefix", "xox hugs", "AIzaSy", "sk-", "ask-me-anything-now-please",
          "sk_test_x"]:
    add("api_key", t)

os.makedirs("crates/core/tests/data", exist_ok=True)
with open("crates/core/tests/data/redaction_corpus.tsv", "w") as f:
    f.write("# kind\ttext\tpii (empty: a near-miss that must survive). Written by bench/ai/make_redaction_corpus.py\n")
    for r in rows:
        f.write("\t".join(r) + "\n")
pos = sum(1 for r in rows if r[2])
print(f"{len(rows)} cases, {pos} with PII, {len(rows) - pos} near-misses")
