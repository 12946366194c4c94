"""Proof-of-work: find a nonce so that SHA-256(challenge || nonce) starts with D zero bits.

The browser searches in a Web Worker (WORKER_JS, plain ES5 so old phones run it); the edge checks
an answer with one hash. `solve` is the same search in Python, for the traffic lab and tests.

Difficulty by threat level (expected hashes = 2**D; the search is geometric, so about 1 reader
in 20 needs 3x the expected count). Times for one worker at the assumed old-phone rate:

    level  D   expected   old phone (~0.2 M hashes/s per worker)
    0      14      16 k      0.1 s
    1      16      65 k      0.3 s
    2      18     262 k      1.3 s
    3      20     1.0 M      5 s (about 2 s with the 3 workers a 4-core phone gets)

Measured on the 2-core build VM: WORKER_JS runs at 0.7-1.3 M hashes/s in Node 20 and about
0.5 M/s in Chromium; with DevTools' 4x CPU slowdown (Lighthouse's "mid-tier mobile") about
0.2 M/s, which is the phone assumption above. Native code is far faster, so the work mostly
prices out floods that do not run the page at all; the table is a constructor argument.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

from kalkan.defense.challenge.method import Verdict
from kalkan.defense.challenge.tokens import POW, Ticket

DIFFICULTIES = (14, 16, 18, 20)   # leading zero bits by threat level 0..3 (higher levels: 20)
MAX_DIFFICULTY = 30               # the worker compares one 32-bit word
MAX_NONCE_LEN = 16


def difficulty_for(threat_level: int, table: tuple[int, ...] = DIFFICULTIES) -> int:
    """Leading zero bits asked of a browser at this threat level (clamped to the table)."""
    return table[min(max(threat_level, 0), len(table) - 1)]


def leading_zero_bits(digest: bytes) -> int:
    value = int.from_bytes(digest, "big")
    return len(digest) * 8 - value.bit_length()


def check(ticket: Ticket, nonce: str) -> bool:
    """One SHA-256: does `nonce` solve the ticket at the ticket's (signed) difficulty?"""
    if not (0 < len(nonce) <= MAX_NONCE_LEN and nonce.isascii() and nonce.isdigit()):
        return False
    digest = hashlib.sha256((ticket.text + nonce).encode("ascii")).digest()
    # Top 64 bits are enough for any difficulty <= MAX_DIFFICULTY.
    return int.from_bytes(digest[:8], "big") >> (64 - ticket.difficulty) == 0


def solve(challenge: str, difficulty: int, start: int = 0, step: int = 1) -> str:
    """The first nonce (decimal, searched from `start` by `step`) that solves the challenge."""
    if not 0 < difficulty <= MAX_DIFFICULTY:
        raise ValueError(f"difficulty {difficulty} outside 1..{MAX_DIFFICULTY}")
    head = hashlib.sha256(challenge.encode("ascii"))  # the shared prefix is hashed once
    shift = 64 - difficulty
    n = start
    while True:
        h = head.copy()
        s = str(n)
        h.update(s.encode("ascii"))
        if int.from_bytes(h.digest()[:8], "big") >> shift == 0:
            return s
        n += step


def _round_constants() -> str:
    """SHA-256's K: the first 32 fractional bits of the cube roots of the first 64 primes."""
    primes: list[int] = []
    n = 2
    while len(primes) < 64:
        if all(n % p for p in primes if p * p <= n):
            primes.append(n)
        n += 1
    out = []
    for p in primes:
        scaled = p << 96                       # cube root of p * 2**96 = cbrt(p) * 2**32
        r = round(scaled ** (1 / 3))
        while r ** 3 > scaled:
            r -= 1
        while (r + 1) ** 3 <= scaled:
            r += 1
        out.append(r & 0xFFFFFFFF)
    return ",".join(str(k - (1 << 32) if k >= 1 << 31 else k) for k in out)


def _initial_state() -> str:
    """SHA-256's H0: the first 32 fractional bits of the square roots of the first 8 primes."""
    words = [math.isqrt(p << 64) & 0xFFFFFFFF for p in (2, 3, 5, 7, 11, 13, 17, 19)]
    return ",".join(str(w - (1 << 32) if w >= 1 << 31 else w) for w in words)


# The worker: `search(c, d, n, step, limit)` tries nonces n, n+step, ... (at most `limit`) and
# returns the winning nonce as a string, or null. Full 64-byte blocks of the challenge are
# hashed once (the "midstate"); each nonce then costs one or two compressions of the tail.
# Messages: in {c, d, n, s} (start, stride); out {t: tried so far} ... then {n: "nonce"}.
WORKER_JS = """function(self){
var K=new Int32Array([%K%]),H=[%H%],W=new Int32Array(64),M=new Int32Array(8),
O=new Int32Array(8),B=new Uint8Array(128);
function z(s,o,p){var i,j,x,y,a,b,c,d,e,f,g,h,t,u;
for(i=0;i<16;i++){j=p+i*4;W[i]=B[j]<<24|B[j+1]<<16|B[j+2]<<8|B[j+3];}
for(i=16;i<64;i++){x=W[i-15];y=W[i-2];W[i]=((x>>>7|x<<25)^(x>>>18|x<<14)^x>>>3)+
((y>>>17|y<<15)^(y>>>19|y<<13)^y>>>10)+W[i-7]+W[i-16]|0;}
a=s[0];b=s[1];c=s[2];d=s[3];e=s[4];f=s[5];g=s[6];h=s[7];
for(i=0;i<64;i++){t=h+((e>>>6|e<<26)^(e>>>11|e<<21)^(e>>>25|e<<7))+(e&f^~e&g)+K[i]+W[i]|0;
u=((a>>>2|a<<30)^(a>>>13|a<<19)^(a>>>22|a<<10))+(a&b^a&c^b&c)|0;
h=g;g=f;f=e;e=d+t|0;d=c;c=b;b=a;a=t+u|0;}
o[0]=s[0]+a;o[1]=s[1]+b;o[2]=s[2]+c;o[3]=s[3]+d;o[4]=s[4]+e;o[5]=s[5]+f;o[6]=s[6]+g;
o[7]=s[7]+h;}
function search(c,d,n,step,limit){var L=c.length,q=L>>6,r=L-q*64,i,k,s,m,l,bits;
for(i=0;i<8;i++)M[i]=H[i];
for(k=0;k<q;k++){for(i=0;i<64;i++)B[i]=c.charCodeAt(k*64+i);z(M,M,0);}
for(i=0;i<r;i++)B[i]=c.charCodeAt(q*64+i);
for(k=0;k<limit;k++,n+=step){s=String(n);m=r+s.length;l=m+9>64?128:64;
for(i=0;i<s.length;i++)B[r+i]=s.charCodeAt(i);
B[m]=128;for(i=m+1;i<l;i++)B[i]=0;
bits=(L+s.length)*8;B[l-2]=bits>>>8;B[l-1]=bits&255;
z(M,O,0);if(l>64)z(O,O,64);
if(O[0]>>>(32-d)===0)return s;}
return null;}
self.search=search;
self.onmessage=function(e){var m=e.data,n=m.n,s;
for(;;){s=search(m.c,m.d,n,m.s,8192);if(s!==null){self.postMessage({n:s});return;}
n+=8192*m.s;self.postMessage({t:8192});}};
}""".replace("%K%", _round_constants()).replace("%H%", _initial_state()).replace("\n", "")


class ProofOfWork:
    """Method `pow`: GET /.kalkan/pow?c=CHALLENGE&n=NONCE&r=RETURN, checked with one hash."""

    name = "pow"
    kind = POW

    def admit(self, prefix: str, now: float) -> bool:
        return True  # a wrong answer costs the edge two hashes; the engine's rates cover the rest

    def verify(self, ticket: Ticket, params: Mapping[str, str], now: float) -> Verdict:
        return Verdict.PASS if check(ticket, params.get("n", "")) else Verdict.FAIL
