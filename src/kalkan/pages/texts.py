"""The words of every page a reader can see from Kalkan, in Kyrgyz, Russian and English.

A template gets `t`: the "common" texts merged with its own page's (`t.title` is the page's
title and heading). Texts are plain strings (templates escape them); `{s}` in a text is a
number of seconds filled per request.
"""

from __future__ import annotations

TEXTS: dict[str, dict[str, dict[str, str]]] = {
    "ky": {
        "common": {
            "code": "Ката коду: {status}",
            "home": "Башкы бетке өтүү",
            "reload": "Баракты жаңылоо",
            "privacy": "Бул барактагы эч нерсе башка сайттардан жүктөлбөйт.",
        },
        "challenge": {
            "title": "Браузериңиз текшерилүүдө",
            "intro": "Бул сайт чабуулдардан корголгон. Барак ачылаардан мурун биз аны бот эмес,"
                     " окурман ачып жатканын текшеребиз.",
            "calc": "Браузериңиз кыска эсептөө жүргүзүүдө. Бул бир нече секундга созулат,"
                    " андан кийин керектүү барак ачылат.",
            "progress_label": "Текшерүүнүн жүрүшү",
            "starting": "Башталууда…",
            "progress": "Текшерилүүдө… {p}%",
            "done": "Даяр. Барак ачылууда…",
            "continue": "Улантуу",
            "cookies": "Бул сайт үчүн cookie файлдарына уруксат бериңиз: текшерүү"
                       " браузериңизде бир cookie калтырат.",
            "nojs": "JavaScript өчүрүлгөн. {s} секунд күтө туруңуз — барак өзү ачылат."
                    " Ачылбаса, «Улантуу» баскычын басыңыз.",
            "trouble": "Иштебей жатабы? JavaScript'сиз улантуу",
            "why": "Текшерүүдөн кийин браузериңизде андан өткөнүңүздү тастыктаган бир cookie"
                   " сакталат; анда сиз тууралуу эч кандай маалымат жок.",
        },
        "nojs-wait": {
            "title": "Бир аз күтө туруңуз",
            "text": "Дагы {s} секунд күтүп, «Улантуу» баскычын басыңыз. Барак өзү да ачылат.",
            "continue": "Улантуу",
        },
        "challenge-failed": {
            "title": "Текшерүүдөн өтпөй калды",
            "text": "Браузериңиздин жообу кабыл алынган жок: текшерүү өтө көп убакыт алгандыр"
                    " же туташууңуз өзгөргөндүр. Кайра аракет кылыңыз.",
            "link": "Кайра аракет кылуу",
        },
        "challenge-limited": {
            "title": "Аракеттер өтө көп",
            "text": "Сиздин тармактан өтө көп текшерүү келди. Бир нече мүнөттөн кийин кайра"
                    " аракет кылыңыз.",
            "link": "Кайра аракет кылуу",
        },
        "challenge-notfound": {
            "title": "Табылган жок",
            "text": "Бул дарек сайттын коргоосуна тиешелүү, бул жерде көрсөтө турган эч нерсе"
                    " жок.",
            "link": "Баракка өтүү",
        },
        "block": {
            "title": "Кирүү убактылуу жабылды",
            "text": "Бул даректен сайт уруксат бергенден көп суроо келди, ошондуктан ал"
                    " убактылуу бөгөттөлдү. Эгер сиз окурман болсоңуз, кийинчерээк же башка"
                    " тармактан (мисалы, Wi‑Fi ордуна мобилдик интернет аркылуу) кайра аракет"
                    " кылыңыз.",
        },
        "tarpit": {
            "title": "Суроолор өтө көп",
            "text": "Бул даректен суроолор өтө тез келип жатат, ошондуктан сайт аларга бир аз"
                    " убакыт жай жооп берет. Эгер сиз окурман болсоңуз, бир мүнөт күтүп,"
                    " баракты жаңылаңыз.",
        },
        "busy": {
            "title": "Сайт ашыкча жүктөлгөн",
            "text": "Азыр сайтка өтө көп суроо келип жатат, ал эми бул барак сакталган"
                    " көчүрмөлөрдүн арасында жок. Бир нече секунд күтүп, баракты жаңылаңыз;"
                    " жакында ачылган барактар мурдагыдай эле ачылат.",
        },
        "maintenance": {
            "title": "Техникалык иштер жүрүп жатат",
            "text": "Сайтта техникалык иштер жүрүп жатат, ошондуктан бул баракты азыр ачуу"
                    " мүмкүн эмес. Жакында ачылган барактар мурдагыдай эле ачылат. Бир аздан"
                    " кийин кайра кириңиз.",
        },
        "bad-gateway": {
            "title": "Сайтка жетүү мүмкүн эмес",
            "text": "Коргоочу сервер бул баракты сайттан ала алган жок, анын сакталган"
                    " көчүрмөсү да жок. Адатта бул көпкө созулбайт. Бир мүнөттөн кийин"
                    " баракты жаңылаңыз.",
        },
        "timeout": {
            "title": "Сайт өз убагында жооп берген жок",
            "text": "Сайт бул баракты өтө узак убакыт жөнөткөн жок, анын сакталган көчүрмөсү"
                    " да жок. Бир мүнөттөн кийин баракты жаңылаңыз.",
        },
    },
    "ru": {
        "common": {
            "code": "Код ошибки: {status}",
            "home": "На главную страницу",
            "reload": "Обновить страницу",
            "privacy": "Ничего на этой странице не загружается с других сайтов.",
        },
        "challenge": {
            "title": "Проверка браузера",
            "intro": "Сайт защищён от атак. Прежде чем откроется страница, мы проверяем, что её"
                     " открывает читатель, а не бот.",
            "calc": "Ваш браузер выполняет короткое вычисление. Это займёт несколько секунд,"
                    " затем откроется нужная страница.",
            "progress_label": "Ход проверки",
            "starting": "Начинаем…",
            "progress": "Проверка… {p}%",
            "done": "Готово. Открываем страницу…",
            "continue": "Продолжить",
            "cookies": "Разрешите cookie для этого сайта: проверка сохраняет в браузере один"
                       " cookie-файл.",
            "nojs": "JavaScript отключён. Подождите {s} с — страница откроется сама. Если этого"
                    " не произошло, нажмите «Продолжить».",
            "trouble": "Не работает? Продолжить без JavaScript",
            "why": "После проверки браузер хранит один cookie-файл, подтверждающий её"
                   " прохождение; сведений о вас в нём нет.",
        },
        "nojs-wait": {
            "title": "Ещё немного",
            "text": "Подождите ещё {s} с и нажмите «Продолжить». Страница также откроется сама.",
            "continue": "Продолжить",
        },
        "challenge-failed": {
            "title": "Проверка не пройдена",
            "text": "Ответ браузера не удалось принять: возможно, проверка заняла слишком много"
                    " времени или изменилось подключение. Попробуйте ещё раз.",
            "link": "Попробовать снова",
        },
        "challenge-limited": {
            "title": "Слишком много попыток",
            "text": "Из вашей сети пришло слишком много проверок. Попробуйте снова через"
                    " несколько минут.",
            "link": "Попробовать снова",
        },
        "challenge-notfound": {
            "title": "Не найдено",
            "text": "Этот адрес относится к защите сайта, здесь нечего показать.",
            "link": "Перейти на страницу",
        },
        "block": {
            "title": "Доступ временно закрыт",
            "text": "С этого адреса пришло больше запросов, чем допускает сайт, поэтому он"
                    " временно заблокирован. Если вы читатель, попробуйте позже или из другой"
                    " сети (например, через мобильный интернет вместо Wi‑Fi).",
        },
        "tarpit": {
            "title": "Слишком много запросов",
            "text": "Запросы с этого адреса приходят слишком часто, поэтому сайт какое-то время"
                    " отвечает на них медленно. Если вы читатель, подождите минуту и обновите"
                    " страницу.",
        },
        "busy": {
            "title": "Сайт перегружен",
            "text": "Сейчас на сайт приходит слишком много запросов, а этой страницы нет среди"
                    " сохранённых копий. Подождите несколько секунд и обновите страницу;"
                    " недавно открытые страницы по-прежнему доступны.",
        },
        "maintenance": {
            "title": "Технические работы",
            "text": "На сайте идут технические работы, поэтому эту страницу сейчас нельзя"
                    " открыть. Недавно открытые страницы по-прежнему доступны. Пожалуйста,"
                    " зайдите чуть позже.",
        },
        "bad-gateway": {
            "title": "Сайт недоступен",
            "text": "Защищающий сервер не смог получить эту страницу от сайта, а сохранённой"
                    " копии у него нет. Обычно это ненадолго. Обновите страницу через минуту.",
        },
        "timeout": {
            "title": "Сайт не ответил вовремя",
            "text": "Сайт слишком долго не присылал эту страницу, а сохранённой копии нет."
                    " Обновите страницу через минуту.",
        },
    },
    "en": {
        "common": {
            "code": "Error code: {status}",
            "home": "Go to the home page",
            "reload": "Reload the page",
            "privacy": "Nothing on this page is loaded from other sites.",
        },
        "challenge": {
            "title": "Checking your browser",
            "intro": "This site is protected from attacks. Before the page opens, we check that"
                     " a reader is opening it, not a bot.",
            "calc": "Your browser is doing a short calculation. It takes a few seconds, then"
                    " your page opens.",
            "progress_label": "Progress of the check",
            "starting": "Starting…",
            "progress": "Checking… {p}%",
            "done": "Done. Opening the page…",
            "continue": "Continue",
            "cookies": "Please allow cookies for this site: the check leaves one cookie in your"
                       " browser.",
            "nojs": "JavaScript is off. Wait {s} seconds and the page opens by itself. If it"
                    " does not, press “Continue”.",
            "trouble": "Not working? Continue without JavaScript",
            "why": "After the check your browser keeps one cookie saying that it passed; it"
                   " holds nothing about you.",
        },
        "nojs-wait": {
            "title": "Just a moment",
            "text": "Please wait {s} more seconds, then press “Continue”. The page also opens"
                    " by itself.",
            "continue": "Continue",
        },
        "challenge-failed": {
            "title": "The check did not succeed",
            "text": "Your browser's answer could not be accepted: the check may have taken too"
                    " long, or your connection changed. Please try again.",
            "link": "Try again",
        },
        "challenge-limited": {
            "title": "Too many attempts",
            "text": "Too many checks came from your network. Please try again in a few"
                    " minutes.",
            "link": "Try again",
        },
        "challenge-notfound": {
            "title": "Not found",
            "text": "This address belongs to the site's protection and has nothing to show.",
            "link": "Continue to the page",
        },
        "block": {
            "title": "Access blocked for a while",
            "text": "This address sent more requests than the site allows, so it is blocked"
                    " for a while. If you are a reader, please try again later or from another"
                    " network (for example, mobile data instead of Wi‑Fi).",
        },
        "tarpit": {
            "title": "Too many requests",
            "text": "Requests from this address are coming too fast, so the site answers them"
                    " slowly for a while. If you are a reader, wait a minute and reload the"
                    " page.",
        },
        "busy": {
            "title": "The site is very busy",
            "text": "The site is getting too many requests right now, and this page is not"
                    " among its stored copies. Please wait a few seconds and reload the page;"
                    " pages opened recently are still available.",
        },
        "maintenance": {
            "title": "Down for maintenance",
            "text": "The site is being worked on, so this page cannot be opened right now."
                    " Pages opened recently are still available. Please come back a little"
                    " later.",
        },
        "bad-gateway": {
            "title": "The site cannot be reached",
            "text": "The protecting server could not get this page from the site, and it has"
                    " no stored copy of it. This is usually short. Please reload the page in"
                    " a minute.",
        },
        "timeout": {
            "title": "The site did not answer in time",
            "text": "The site took too long to send this page, and there is no stored copy of"
                    " it. Please reload the page in a minute.",
        },
    },
}


def texts_for(lang: str, kind: str) -> dict[str, str]:
    """What a template gets as `t`: the common texts, then its page's."""
    by_kind = TEXTS[lang]
    return {**by_kind["common"], **by_kind[kind]}
