-- A crowd of browsers for wrk: every request is a different reader's, as real traffic is.
--
--   wrk -t1 -c64 -d10s --latency -s bench/wrk/readers.lua URL [-- xff=N]
--
-- Each request carries a realistic browser User-Agent (one of ~50 real templates with a varying
-- version/build number), the headers that browser sends on a navigation (Accept,
-- Accept-Language, Accept-Encoding, Sec-Fetch-*, ...), and its own analytics cookie. A
-- per-request counter goes into the cookie, so no two requests are byte-identical (an edge
-- that remembers request bytes gets no repeats). With `xff=N` every request also carries an
-- X-Forwarded-For address, cycling through N distinct ones (in 100.64.0.0/10, the carrier-grade NAT range,
-- spread over many /24s); an edge that trusts 127.0.0.1 sees N clients, and each client keeps
-- its browser (User-Agent and the headers that go with it), as a reader does.
-- wrk does not connect anywhere but the URL; the forwarded addresses are only header text.

-- {prefix, suffix, lowest major, highest major, style}: the version is built between prefix
-- and suffix. Styles: "chrome" = MAJOR.0.BUILD.PATCH (Chromium-based browsers, their headers);
-- "ffdup" = Firefox, which repeats MAJOR.0 after rv: and Firefox/; "safari" = MAJOR.MINOR;
-- "firefox" = MAJOR.MINOR.PATCH with Firefox's headers (other apps' own version numbers).
local W10 = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
local MAC = "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
local LNX = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
local AND = "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
local templates = {
  {W10 .. "Chrome/", " Safari/537.36", 110, 126, "chrome"},
  {MAC .. "Chrome/", " Safari/537.36", 110, 126, "chrome"},
  {LNX .. "Chrome/", " Safari/537.36", 110, 126, "chrome"},
  {"Mozilla/5.0 (Windows NT 10.0; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/", " Safari/537.36", 100, 120, "chrome"},
  {"Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/", " Safari/537.36", 110, 126, "chrome"},
  {AND .. "Chrome/", " Mobile Safari/537.36", 110, 126, "chrome"},
  {"Mozilla/5.0 (Linux; Android 13; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/", " Mobile Safari/537.36", 110, 126, "chrome"},
  {"Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/", " Mobile Safari/537.36", 115, 126, "chrome"},
  {"Mozilla/5.0 (Linux; Android 12; SM-A525F) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/", " Mobile Safari/537.36", 105, 124, "chrome"},
  {"Mozilla/5.0 (Linux; Android 11; Redmi Note 9 Pro) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/", " Mobile Safari/537.36", 100, 122, "chrome"},
  {"Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/", " Mobile/15E148 Safari/604.1", 110, 126, "chrome"},
  {"Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) CriOS/", " Mobile/15E148 Safari/604.1", 110, 124, "chrome"},
  {"Mozilla/5.0 (Linux; Android 13; SM-A546B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/", " Chrome/115.0.0.0 Mobile Safari/537.36", 20, 25, "firefox"},
  {"Mozilla/5.0 (Linux; Android 12; SM-G991B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/", " Chrome/111.0.5563.116 Mobile Safari/537.36", 18, 24, "firefox"},
  {W10 .. "Chrome/", " Safari/537.36 Edg/124.0.2478.80", 110, 126, "chrome"},
  {MAC .. "Chrome/", " Safari/537.36 Edg/123.0.2420.97", 110, 126, "chrome"},
  {"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/", " Safari/537.36 OPR/109.0.0.0", 110, 124, "chrome"},
  {"Mozilla/5.0 (Linux; Android 10; VOG-L29) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/", " Mobile Safari/537.36 OPR/81.1.4292.78446", 110, 124, "chrome"},
  {W10 .. "Chrome/", " YaBrowser/24.1.0.0 Safari/537.36", 110, 122, "chrome"},
  {W10 .. "Chrome/", " Safari/537.36 Vivaldi/6.6.3271.61", 110, 124, "chrome"},
  {"Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:", ") Gecko/20100101 Firefox/", 100, 126, "ffdup"},
  {"Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:", ") Gecko/20100101 Firefox/", 100, 126, "ffdup"},
  {"Mozilla/5.0 (X11; Linux x86_64; rv:", ") Gecko/20100101 Firefox/", 100, 126, "ffdup"},
  {"Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:", ") Gecko/20100101 Firefox/", 100, 126, "ffdup"},
  {"Mozilla/5.0 (Android 14; Mobile; rv:", ") Gecko/124.0 Firefox/", 110, 126, "ffdup"},
  {"Mozilla/5.0 (Android 13; Mobile; LG-M255; rv:", ") Gecko/115.0 Firefox/", 100, 124, "ffdup"},
  {"Mozilla/5.0 (Windows NT 6.1; Win64; x64; rv:", ") Gecko/20100101 Firefox/", 100, 115, "ffdup"},
  {"Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) FxiOS/", " Mobile/15E148 Safari/605.1.15", 110, 125, "firefox"},
  {"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/", " Safari/605.1.15", 15, 17, "safari"},
  {"Mozilla/5.0 (iPhone; CPU iPhone OS 17_4_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/", " Mobile/15E148 Safari/604.1", 15, 17, "safari"},
  {"Mozilla/5.0 (iPhone; CPU iPhone OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/", " Mobile/15E148 Safari/604.1", 15, 16, "safari"},
  {"Mozilla/5.0 (iPhone; CPU iPhone OS 15_8 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/", " Mobile/15E148 Safari/604.1", 15, 15, "safari"},
  {"Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/", " Mobile/15E148 Safari/604.1", 16, 17, "safari"},
  {"Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/", " Safari/605.1.15", 17, 17, "safari"},
  {"Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/", " Mobile/15E148 Safari/604.1 [FBAN/FBIOS;FBAV/455.0.0.38.109]", 17, 17, "safari"},
  {"Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 Instagram ", " (iPhone14,2; iOS 17_2; en_US; en; scale=3.00; 1170x2532)", 300, 330, "firefox"},
  {"Mozilla/5.0 (Linux; Android 13; SM-S911B Build/TP1A.220624.014; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/", " Mobile Safari/537.36 [FB_IAB/FB4A;FBAV/456.0.0.0;]", 110, 124, "chrome"},
  {"Mozilla/5.0 (Linux; Android 12; M2101K6G Build/SKQ1.210908.001; wv) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/", " Mobile Safari/537.36", 105, 124, "chrome"},
  {"Mozilla/5.0 (Linux; Android 11; SM-T505) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/", " Safari/537.36", 100, 122, "chrome"},
  {"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/", " Safari/537.36 Brave/1", 110, 124, "chrome"},
  {"Mozilla/5.0 (Windows NT 11.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/", " Safari/537.36", 110, 126, "chrome"},
  {"Mozilla/5.0 (Macintosh; Intel Mac OS X 13_6_4) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/", " Safari/537.36", 110, 126, "chrome"},
  {"Mozilla/5.0 (Linux; U; Android 10; en-us; Redmi Note 8 Build/QKQ1.200114.002) AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/", " Mobile Safari/537.36 XiaoMi/MiuiBrowser/14.5", 100, 118, "chrome"},
  {"Mozilla/5.0 (Linux; Android 10; HarmonyOS; ELS-NX9) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/", " HuaweiBrowser/14.0.2.311 Mobile Safari/537.36", 99, 114, "chrome"},
  {"Mozilla/5.0 (Windows NT 10.0; Win64; x64; Xbox; Xbox One) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/", " Safari/537.36 Edge/44.18363.8131", 100, 120, "chrome"},
  {"Mozilla/5.0 (SMART-TV; Linux; Tizen 6.0) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/", " Chrome/85.0.4183.93 TV Safari/537.36", 4, 6, "firefox"},
  {"Mozilla/5.0 (X11; Fedora; Linux x86_64; rv:", ") Gecko/20100101 Firefox/", 115, 126, "ffdup"},
  {"Mozilla/5.0 (Windows NT 10.0; rv:", ") Gecko/20100101 Firefox/", 115, 126, "ffdup"},
  {"Mozilla/5.0 (Linux; Android 14; SM-F946B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/", " Mobile Safari/537.36", 118, 126, "chrome"},
  {"Mozilla/5.0 (Linux; Android 9; SM-J730F) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/", " Mobile Safari/537.36", 95, 116, "chrome"},
}

-- What each browser family sends on a top-level navigation besides its User-Agent.
local ACCEPT_CHROME = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7"
local ACCEPT_FIREFOX = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
local ACCEPT_SAFARI = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
local languages = {
  "en-US,en;q=0.9", "en-GB,en;q=0.9", "tr-TR,tr;q=0.9,en-US;q=0.8,en;q=0.7", "de-DE,de;q=0.9,en;q=0.8",
  "fr-FR,fr;q=0.9,en-US;q=0.8,en;q=0.7", "es-ES,es;q=0.9", "en-US,en;q=0.5", "nl-NL,nl;q=0.9,en-US;q=0.8,en;q=0.7",
  "pt-BR,pt;q=0.9,en-US;q=0.8,en;q=0.7", "it-IT,it;q=0.9,en-US;q=0.8,en;q=0.7",
}
local referers = {
  "", "Referer: https://www.google.com/\r\n", "Referer: https://t.co/\r\n",
  "Referer: https://news.ycombinator.com/\r\n", "Referer: https://www.facebook.com/\r\n", "",
}
local themes = {"dark", "light", "auto"}

local random = math.random
local n = 0
local me = 0         -- this thread's number (global `tid`, set by setup), so threads never
                     -- build the same cookie
local xff = nil      -- list of "X-Forwarded-For: a.b.c.d\r\n" lines, or nil
local head = nil     -- "GET PATH HTTP/1.1\r\nHost: ...\r\n"

local thread_count = 0
function setup(thread)  -- runs in wrk's main state, once per thread before it starts
  thread:set("tid", thread_count)
  thread_count = thread_count + 1
end

function init(args)
  me = tonumber(tid) or 0
  math.randomseed(os.time() * 1000 + me)
  head = "GET " .. wrk.path .. " HTTP/1.1\r\nHost: " .. wrk.headers["Host"] .. "\r\n"
  for _, arg in ipairs(args) do
    local count = arg:match("^xff=(%d+)$")
    if count then
      -- i -> 100.64.0.0 + (i * 40503 mod 2^22): a bijection on the /10 (40503 is odd), so N
      -- distinct addresses spread over many /24s rather than N/256 neighbouring ones.
      xff = {}
      for i = 0, tonumber(count) - 1 do
        local a = (i * 40503) % 4194304
        xff[i + 1] = string.format("X-Forwarded-For: 100.%d.%d.%d\r\n",
          64 + math.floor(a / 65536), math.floor(a / 256) % 256, a % 256)
      end
    end
  end
end

local function user_agent(t)
  local major = random(t[3], t[4])
  local style = t[5]
  if style == "chrome" then
    return t[1] .. major .. ".0." .. random(4000, 6999) .. "." .. random(10, 250) .. t[2]
  elseif style == "ffdup" then  -- Firefox repeats its version: rv:V.0) Gecko/... Firefox/V.0
    return t[1] .. major .. ".0" .. t[2] .. major .. ".0"
  elseif style == "safari" then
    return t[1] .. major .. "." .. random(0, 6) .. t[2]
  end
  return t[1] .. major .. "." .. random(0, 9) .. "." .. random(0, 99) .. t[2]
end

local client_t, client_ua = {}, {}   -- with xff: each client's browser, kept (its template, UA)

-- A client's browser, the same in every wrk run (the warm-up's and the measured run's): the
-- template and the version numbers drawn from a generator seeded by the client's number.
local function browser_of(k)
  local state = k * 2654435761 % 4294967296
  local function draw(lo, hi)
    state = (state * 1103515245 + 12345) % 2147483648
    return lo + state % (hi - lo + 1)
  end
  local t = templates[draw(1, #templates)]
  local major, style = draw(t[3], t[4]), t[5]
  local ua
  if style == "chrome" then
    ua = t[1] .. major .. ".0." .. draw(4000, 6999) .. "." .. draw(10, 250) .. t[2]
  elseif style == "ffdup" then
    ua = t[1] .. major .. ".0" .. t[2] .. major .. ".0"
  elseif style == "safari" then
    ua = t[1] .. major .. "." .. draw(0, 6) .. t[2]
  else
    ua = t[1] .. major .. "." .. draw(0, 9) .. "." .. draw(0, 99) .. t[2]
  end
  return t, ua
end

request = function()
  n = n + 1
  local k = xff and (n % #xff + 1)
  local t, ua
  if k then
    t = client_t[k]
    if not t then
      client_t[k], client_ua[k] = browser_of(k)
      t = client_t[k]
    end
    ua = client_ua[k]
  else
    t = templates[random(#templates)]
    ua = user_agent(t)
  end
  local style = t[5]
  local accept, extra
  if style == "chrome" then
    accept = ACCEPT_CHROME
    extra = "Upgrade-Insecure-Requests: 1\r\nSec-Fetch-Site: none\r\nSec-Fetch-Mode: navigate\r\n" ..
            "Sec-Fetch-User: ?1\r\nSec-Fetch-Dest: document\r\n"
  elseif style == "safari" then
    accept = ACCEPT_SAFARI
    extra = "Sec-Fetch-Site: none\r\nSec-Fetch-Mode: navigate\r\nSec-Fetch-Dest: document\r\n"
  else
    accept = ACCEPT_FIREFOX
    extra = "Upgrade-Insecure-Requests: 1\r\nSec-Fetch-Dest: document\r\nSec-Fetch-Mode: navigate\r\n" ..
            "Sec-Fetch-Site: cross-site\r\nSec-Fetch-User: ?1\r\n"
  end
  -- The counter (times 256, plus this thread's number) makes every cookie unique.
  local cookie = "Cookie: _ga=GA1.2." .. random(100000000, 999999999) .. "." ..
                 (1700000000 + n * 256 + me) .. "; _gid=GA1.2." .. random(100000000, 999999999) ..
                 "." .. random(1700000000, 1799999999) .. "; theme=" .. themes[random(3)] .. "\r\n"
  return head ..
    "User-Agent: " .. ua .. "\r\n" ..
    "Accept: " .. accept .. "\r\n" ..
    "Accept-Language: " .. languages[random(#languages)] .. "\r\n" ..
    "Accept-Encoding: gzip, deflate, br\r\n" ..
    referers[random(#referers)] ..
    extra ..
    cookie ..
    (k and xff[k] or "") ..
    "Connection: keep-alive\r\n\r\n"
end
