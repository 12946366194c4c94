"""The demo newsroom's words and pages: its articles (English and Russian), the exchange-rate box
and the templates that turn them into HTML, RSS, sitemap and robots.txt text.

Chyrak is a fictional outlet. Every text here was written for Kalkan; apart from the summary of the
Kyrgyz media community's statement on the December 2020 DDoS attacks, its people and events are
invented. Pages link only to this site: no third-party scripts, fonts or images.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.utils import format_datetime
from html import escape
from urllib.parse import quote_plus

SITE_NAME = "Chyrak"
# Exchange rates (KGS for one unit) on the day of the attacks in the project story.
RATES: tuple[tuple[str, str], ...] = (("USD", "84.77"), ("EUR", "102.46"), ("RUB", "1.14"))
RATES_DATE = date(2020, 12, 15)


@dataclass(frozen=True)
class Comment:
    author: str
    posted: datetime
    text: str


@dataclass(frozen=True)
class Article:
    slug: str
    lang: str  # "en" or "ru"
    section: str  # a key of SECTIONS
    title: str
    summary: str
    author: str
    published: datetime
    updated: datetime
    image: str  # file name under /assets/
    image_alt: str
    caption: str
    tags: tuple[str, ...]
    body: str  # paragraphs split by blank lines; "## " starts a subheading, "> " a quotation
    comments: tuple[Comment, ...] = ()

    @property
    def path(self) -> str:
        return f"/news/{self.slug}/"


def _utc(y: int, mo: int, d: int, h: int = 9, mi: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=UTC)


SECTIONS: dict[str, dict[str, str]] = {
    "media": {"en": "Media", "ru": "Медиа"},
    "economy": {"en": "Economy", "ru": "Экономика"},
    "society": {"en": "Society", "ru": "Общество"},
    "tech": {"en": "Technology", "ru": "Технологии"},
    "regions": {"en": "Regions", "ru": "Регионы"},
}

UI: dict[str, dict[str, str]] = {
    "en": {
        "tagline": "Independent news from Bishkek and the regions",
        "skip": "Skip to content",
        "home": "Home",
        "search": "Search",
        "search_label": "Search the site",
        "search_button": "Find",
        "rates": "Exchange rates",
        "rates_caption": "Som (KGS) for one unit, {date}",
        "currency": "Currency",
        "latest": "Latest news",
        "most_read": "Most read",
        "more": "More news",
        "by": "By",
        "updated": "updated",
        "tags": "Tags",
        "comments": "Comments",
        "no_comments": "No comments yet. Be the first to respond.",
        "leave_comment": "Leave a comment",
        "comment_rules": (
            "Comments are read by an editor before they appear. Please stay on topic and be "
            "kind to each other; we remove insults, threats and advertising."
        ),
        "name": "Name",
        "comment": "Comment",
        "send": "Send comment",
        "share": "Share this story",
        "share_note": (
            "We do not load share buttons from social networks, so they cannot follow you."
        ),
        "copy_link": "Copy link",
        "print": "Print",
        "feed": "RSS feed",
        "about": "About Chyrak",
        "about_text": (
            "Chyrak (\u201clamp\u201d) is a small reader-supported newsroom. Five journalists, one "
            "part-time developer and a lot of volunteers."
        ),
        "newsletter": "Morning letter",
        "newsletter_text": (
            "The five stories you need before work, every weekday at 8:00. Write to "
            "letter@chyrak.example to subscribe."
        ),
        "lang_switch": "По-русски",
        "lang_switch_href": "/ru/",
        "footer_note": (
            "Chyrak is a fictional newsroom made for the Kalkan demo. Apart from the summary "
            "of the December 2020 media statement, the people and events in these articles are "
            "invented."
        ),
        "contacts": "Contacts",
        "privacy": "Privacy",
        "archive": "Archive",
        "author_about": "writes for Chyrak.",
        "results_for": "Search results for \u201c{q}\u201d",
        "results_count": "{n} article(s) found.",
        "no_results": "Nothing found. Try another word, or browse the latest news below.",
        "search_intro": "Type a word or a name to search all our articles.",
        "breaking": "Live",
    },
    "ru": {
        "tagline": "Независимые новости из Бишкека и регионов",
        "skip": "Перейти к содержанию",
        "home": "Главная",
        "search": "Поиск",
        "search_label": "Поиск по сайту",
        "search_button": "Найти",
        "rates": "Курсы валют",
        "rates_caption": "Сомов (KGS) за единицу, {date}",
        "currency": "Валюта",
        "latest": "Последние новости",
        "most_read": "Самое читаемое",
        "more": "Другие новости",
        "by": "Автор:",
        "updated": "обновлено",
        "tags": "Теги",
        "comments": "Комментарии",
        "no_comments": "Комментариев пока нет. Будьте первым.",
        "leave_comment": "Оставить комментарий",
        "comment_rules": (
            "Комментарии появляются после проверки редактором. Пожалуйста, по теме и без "
            "оскорблений: мы удаляем угрозы, ругань и рекламу."
        ),
        "name": "Имя",
        "comment": "Комментарий",
        "send": "Отправить",
        "share": "Поделиться",
        "share_note": "Мы не загружаем кнопки соцсетей, поэтому они не следят за вами.",
        "copy_link": "Скопировать ссылку",
        "print": "Распечатать",
        "feed": "RSS-лента",
        "about": "О «Чыраке»",
        "about_text": (
            "«Чырак» («светильник») — небольшая редакция, которую поддерживают читатели. Пять "
            "журналистов, один разработчик на полставки и много волонтёров."
        ),
        "newsletter": "Утреннее письмо",
        "newsletter_text": (
            "Пять главных новостей до начала рабочего дня, по будням в 8:00. Чтобы подписаться, "
            "напишите на letter@chyrak.example."
        ),
        "lang_switch": "In English",
        "lang_switch_href": "/",
        "footer_note": (
            "«Чырак» — вымышленная редакция, созданная для демонстрации Kalkan. Кроме пересказа "
            "заявления медиасообщества в декабре 2020 года, люди и события в статьях придуманы."
        ),
        "contacts": "Контакты",
        "privacy": "Приватность",
        "archive": "Архив",
        "author_about": "пишет для «Чырака».",
        "results_for": "Результаты поиска: «{q}»",
        "results_count": "Найдено статей: {n}.",
        "no_results": "Ничего не найдено. Попробуйте другое слово или посмотрите свежие новости.",
        "search_intro": "Введите слово или имя, чтобы найти статью.",
        "breaking": "Сейчас",
    },
}

_MONTHS = {
    "en": (
        "January", "February", "March", "April", "May", "June", "July", "August",
        "September", "October", "November", "December",
    ),
    "ru": (
        "января", "февраля", "марта", "апреля", "мая", "июня", "июля", "августа",
        "сентября", "октября", "ноября", "декабря",
    ),
}  # fmt: skip


def human_date(d: date, lang: str) -> str:
    return f"{d.day} {_MONTHS[lang][d.month - 1]} {d.year}"


# --- the articles -----------------------------------------------------------------------------

_STATEMENT_EN = """\
Editors of more than a dozen Kyrgyz newsrooms have signed a joint statement after a series of
denial-of-service attacks knocked investigative and news websites offline this week. The attacks
began within hours of factcheck.kg publishing an investigation into the family of a powerful
official, and then moved on, one by one, to every outlet that republished it.

According to the statement, the pattern was the same each time. A site would publish or link to
the investigation; shortly afterwards its server would be buried under a flood of requests from
thousands of addresses, until readers saw nothing but error pages. Kloop, Kaktus.Media,
Economist.kg, Govori.tv, Vb.kg, Knews.kg and Pk.kg were among the sites that went down, some of
them several times in one day.

## "Forced to defend ourselves"

The signatories write that newsrooms in the country are "forced to independently provide their
physical security and cybersecurity". In plain terms: no one else is coming. A small editorial
office that rents a single server for a few thousand som a month is expected to withstand the
kind of traffic that would trouble a bank.

The statement asks the authorities to treat the attacks as crimes against the freedom of the
press, to investigate who ordered them, and to report publicly on the results. It also calls on
hosting companies and internet providers to cooperate with journalists when their sites are
under attack, instead of simply switching off the customer who is being targeted.

> An attack on one newsroom that publishes an investigation is an attack on every reader who
> wanted to read it.

That line, repeated in different words by several editors we spoke to, explains why the outlets
chose to respond together. Republishing a colleague's investigation is an old tradition: if one
site is silenced, the story survives on another. This time the attackers seemed to follow the
story from site to site, which turned an act of solidarity into a risk.

## What the attacks looked like

Technical staff at two of the affected outlets described the floods to us. Neither saw anything
sophisticated. The requests looked like ordinary page views, but there were far too many of
them, often with random text added to the address so that the server could not answer from its
cache and had to build every page from scratch. Search pages and comment forms, which are
expensive to generate, were hit especially hard.

"Our server can make about a hundred pages a second," said one of the developers, who asked us
not to name him. "For a normal evening that is plenty. That night it was receiving thousands of
requests a second, and it simply stopped answering."

Several outlets restored access within hours by putting their sites behind foreign protection
services. That works, the editors note, but it has a price: it means routing every reader's
visit, and the keys that protect it, through a company in another country, and it is not free.
Others waited the attack out and lost a day of readers at the moment when public interest in the
story was highest.

## What newsrooms are asking for

Beyond the investigation, the statement lists practical requests. Newsrooms want a clear channel
to report attacks to the police and get a case number, access to logs from providers so that
attacks can be documented, and training for the one or two people in each office who look after
the website.

The signatories also promise to keep republishing one another's work. "If the goal was to make
the story disappear," one editor told Chyrak, "it achieved the opposite. More people read it
because they heard that someone tried to hide it."

Chyrak was not among the sites that were attacked. We publish this summary in our own words, and
we will update it if the authorities respond to the statement.
"""

_STATEMENT_RU = """\
Руководители более десятка кыргызстанских редакций подписали совместное заявление после того, как
на этой неделе волна DDoS-атак вывела из строя сайты нескольких изданий. Первым пострадал
factcheck.kg — через несколько часов после публикации расследования о семье влиятельного
чиновника. Затем атаки одна за другой накрыли все издания, которые перепечатали этот материал.

Схема, по словам авторов заявления, каждый раз повторялась. Сайт публиковал расследование или
ссылку на него, и вскоре его сервер захлёбывался от потока запросов с тысяч адресов — читатели
видели только страницу с ошибкой. Среди недоступных оказались Kloop, Kaktus.Media, Economist.kg,
Govori.tv, Vb.kg, Knews.kg и Pk.kg; некоторые сайты падали по нескольку раз за день.

## «Вынуждены защищаться сами»

Редакции пишут, что они «вынуждены самостоятельно обеспечивать свою физическую и кибербезопасность».
Проще говоря, помощи ждать неоткуда. Небольшая редакция, которая арендует один сервер за несколько
тысяч сомов в месяц, должна выдерживать такой поток трафика, который создал бы проблемы и банку.

Авторы заявления просят власти рассматривать атаки как преступление против свободы слова,
установить заказчиков и публично сообщить о результатах расследования. Хостинг-провайдеров и
операторов связи они призывают помогать журналистам во время атак, а не просто отключать клиента,
на которого направлен удар.

> Атака на редакцию, опубликовавшую расследование, — это атака на каждого читателя, который хотел
> его прочитать.

Эту мысль разными словами повторили несколько редакторов, с которыми мы поговорили. Перепечатать
расследование коллег — давняя традиция: если один сайт заставят замолчать, текст останется на
другом. На этот раз атакующие, похоже, шли за материалом от сайта к сайту, и солидарность
превратилась в риск.

## Как выглядели атаки

Технические специалисты двух пострадавших изданий рассказали нам, что ничего изощрённого не
увидели. Запросы выглядели как обычные просмотры страниц, только их было слишком много, и к адресу
часто добавлялся случайный текст. Из-за этого сервер не мог отдать страницу из кэша и собирал
каждую заново. Особенно сильно били по поиску и формам комментариев: их создавать дороже всего.

«Наш сервер может отдавать около ста страниц в секунду, — говорит один из разработчиков, попросивший
не называть его имени. — Для обычного вечера этого достаточно. В ту ночь приходили тысячи запросов
в секунду, и он просто перестал отвечать».

Часть изданий восстановила доступ за несколько часов, подключив зарубежные сервисы защиты. Это
помогает, отмечают редакторы, но у решения есть цена: каждый визит читателя и ключи шифрования
проходят через компанию в другой стране, и бесплатно это не бывает. Другие переждали атаку и
потеряли целый день читателей как раз тогда, когда интерес к теме был самым высоким.

## Чего просят редакции

Помимо расследования, в заявлении перечислены практические просьбы: понятный порядок обращения в
милицию с регистрацией заявления, доступ к логам провайдеров, чтобы атаки можно было
задокументировать, и обучение для тех одного-двух человек в каждой редакции, которые отвечают за
сайт.

Подписавшие также обещают и дальше перепечатывать материалы друг друга. «Если цель была в том,
чтобы история исчезла, вышло наоборот, — сказал «Чыраку» один из редакторов. — Её прочитало больше
людей, потому что все узнали, что её пытались скрыть».

Сайт «Чырака» атакам не подвергался. Мы пересказываем заявление своими словами и дополним текст,
если власти на него ответят.
"""

_RATES_EN = """\
The som held its ground this week despite the usual rise in demand for foreign currency before
the New Year holidays. At exchange offices on Chui Avenue on Tuesday the dollar was changing
hands at around 84.77 som, the euro at 102.46 and the Russian rouble at 1.14, almost unchanged
from the week before.

Traders we spoke to in Bishkek said December is normally their busiest month. Families buy
dollars to pay for trips and large purchases, and importers settle their bills before the
holidays. "Every year people come in with the same question: will it jump in January?" said
Nurlan, who has run a small exchange booth near the Osh Bazaar for nine years. "I tell them the
truth. I don't know, and neither does anyone who says they do."

## Why the rate matters at the kitchen table

For most households the exchange rate is not an abstract number. A large share of what is sold
in Kyrgyz shops is imported, from flour and cooking oil to medicines and phone credit. When the
som weakens, prices follow within weeks. When it holds steady, as it has this month, shop owners
have less reason to rewrite their price tags.

Money sent home by relatives working abroad, most of it in roubles, is the other half of the
story. A stronger rouble means more som for the same transfer; a weaker one means a family in
Naryn or Batken has to make the same amount last longer. Several readers wrote to us this week to
say their December transfers arrived smaller than last year's, even though the sender earned
the same.

## Advice from people who count money for a living

We asked two accountants and a bank teller what they tell their own relatives at this time of
year. Their answers were remarkably similar:

Do not buy currency in a panic after a rumour on social media. Rumours of a sudden devaluation
appear every December, and the people who spread them are often the ones selling.

Keep savings for near-term spending in the currency you will spend them in. If you will pay rent
in som in March, there is little point in holding that money in euros until then.

Use official exchange offices and keep the receipt. Street changers offer a slightly better
rate, and a considerably higher chance of counterfeit notes.

## What happens next

Economists expect demand for dollars to fall back in the second half of January, once the
holiday spending is over. Much will depend on the rouble, which in turn depends on oil prices
and on how many migrants are able to travel for seasonal work in the spring.

Chyrak publishes the average rates from exchange offices in Bishkek every weekday morning in the
box on our home page. They are collected by our reporters, not by an automatic service, so
there may be small differences from what you see at your local booth.
"""

_FAIR_RU = """\
В субботу на площади перед филармонией открылась зимняя ярмарка местных производителей. До конца
декабря здесь будут работать около восьмидесяти палаток: войлок и шерсть из Нарына, мёд из
Таласа, сушёные фрукты из Баткена, сыры и масло из сёл Чуйской долины.

Организаторы — объединение фермеров и городское управление торговли — говорят, что в этом году
мест просили вдвое больше, чем прошлой зимой. Многие производители весной и летом потеряли
привычные рынки сбыта и теперь ищут покупателей напрямую.

## Без посредников

«На оптовом рынке у меня берут мёд по цене, на которую я едва покупаю новые рамки для ульев, —
рассказывает пчеловод Бакыт из Таласской области. — Здесь я продаю сам и вижу людей, которые его
едят. Один мужчина вчера пришёл в третий раз и сказал, что купил банку для мамы в Караколе».

Цены на ярмарке не всегда ниже, чем в магазинах, но покупатели ценят возможность поговорить с
тем, кто сделал товар. Анара, которая пришла с двумя детьми, выбирала шерстяные носки ручной
вязки: «В магазине такие тоже есть, но неизвестно, откуда. А тут бабушка из Кочкора показывает,
как она их вяжет, и дети смотрят как на фокус».

## Тепло и порядок

Городские службы поставили на площади отапливаемые шатры, где можно выпить горячего чая и
погреться. Для продавцов организовали бесплатную доставку товара от автовокзала и охраняемую
стоянку. Каждая палатка получила табличку с именем производителя и районом, откуда он приехал.

Санитарная служба проверяет молочную продукцию и мясо каждое утро, до открытия. По словам
организаторов, за первую неделю ни одного серьёзного нарушения не нашли; двоих продавцов попросили
убрать продукцию, на которой не было даты изготовления.

## Что будет дальше

Ярмарка работает ежедневно с 10:00 до 18:00 до 30 декабря. В последние выходные года обещают
концерт комузистов и мастер-классы по войлоку для детей. Вход свободный.

Фермерское объединение хочет сделать ярмарку постоянной и проводить её хотя бы раз в сезон. Для
этого, говорят организаторы, нужно решить вопрос с крытым помещением: зимой на площади холодно
не только покупателям, но и товару — мёд кристаллизуется, а сыр промерзает.

Если вы были на ярмарке и хотите рассказать о ней или о своём любимом продавце, напишите нам в
комментариях. Лучшие истории мы опубликуем в утреннем письме.
"""

_CHECKLIST_EN = """\
When a small newsroom's website goes down, the person who has to fix it is usually also the
person who updates the social media accounts, repairs the office printer and edits video on the
weekend. This checklist is for that person. None of it requires a big budget, and most of it can
be done in an afternoon.

## Before anything happens

Know what you run. Write down, on paper, where the site is hosted, who has the passwords, which
version of your content management system and plugins you use, and who to call at the hosting
company. During an attack nobody remembers these things.

Make backups that you have actually restored. A backup you have never tested is a hope, not a
backup. Once a month, restore the site to a spare machine or a laptop and check that the
articles, images and comments are all there.

Turn on two-factor login for every account that can change the site: the hosting panel, the
domain registrar, the site's admin accounts and the email accounts used to reset passwords.
Attackers who cannot take the site down often try to take it over instead.

## Make pages cheap

Most of your readers read the same few pages: the home page and today's stories. If your server
builds each of those pages from the database for every visitor, it will run out of breath long
before your audience does. A cache in front of the site, one that keeps a copy of each page for
a few seconds or minutes, lets one server answer thousands of readers.

Be careful with pages that cannot be cached: search, comment forms, login pages. They are the
ones attackers aim at, because each request forces the server to work. Limit how often one
visitor can use them, and consider turning off search temporarily during an attack; readers will
forgive you.

Host your own fonts, scripts and images. Every file loaded from another company's server is a
way for that company to see your readers, and another thing that can break when you are under
pressure.

## During an attack

Write down the time everything started and what you saw. Save the server logs before they are
rotated away. These notes are what the police, your provider and your lawyers will ask for later.

Tell your readers where else they can find you: a messaging channel, a mirror, a newsletter. An
attack is designed to make you silent; a short message saying "we are under attack, here is the
story" defeats much of its purpose.

Talk to your colleagues. Other newsrooms may be under attack at the same moment, and the
addresses attacking them may be the same ones attacking you. Sharing that list costs nothing.

## Afterwards

Hold a short meeting, without blame. What failed first? What did you wish you had known? Update
this checklist with the answers, and put the next backup test in the calendar.

Chyrak's own site is protected by a self-hosted cache and shield running on the same small
server as the site. If you run a newsroom and want to know how we set it up, write to us: we are
happy to share.
"""

_MOBILE_RU = """\
Ещё несколько лет назад типичный читатель новостного сайта сидел за компьютером в офисе. Сегодня,
по нашей статистике, больше восьмидесяти процентов визитов на «Чырак» приходится на телефоны, а
за пределами Бишкека — почти девяносто. Мы съездили в три района, чтобы понять, как люди читают
новости, когда связь есть не всегда.

## Новости в маршрутке

В Кочкоре учительница истории Гульмира читает новости по дороге на работу, в маршрутке. «Пока
едем через перевал, интернет то есть, то нет. Если страница грузится долго, я её закрываю и
больше не возвращаюсь». Больше всего её раздражают сайты, где сначала загружается реклама, а текст
появляется последним.

В Таласе студент Эрлан пользуется старым телефоном с маленьким экраном и ограниченным тарифом.
Он выбирает сайты, которые «не съедают трафик», и читает новости в основном через RSS-приложение:
так быстрее и дешевле. «Картинки мне не нужны, мне нужен текст».

## Что это значит для редакций

Для небольшой редакции из этих разговоров следует несколько простых выводов. Страница должна
открываться быстро даже на слабом соединении: текст — сразу, картинки — потом. Сайт должен
работать без JavaScript и без загрузки чужих шрифтов и скриптов. И важно сохранять RSS-ленту,
которую многие давно считают устаревшей.

Мы проверили собственный сайт на недорогом телефоне с медленным мобильным интернетом. Главная
страница открывалась за четыре секунды; после того как мы убрали внешние шрифты и сжали
изображения, — меньше чем за две.

## Связь как общественная проблема

Жители отдалённых сёл говорят, что мобильный интернет заметно улучшился, но остаётся дорогим.
Пенсионерка из Ат-Башы рассказала, что внук пополняет ей счёт раз в месяц, и к концу месяца она
экономит каждый мегабайт: «Сначала смотрю, что случилось у нас в области, потом погоду, а
остальное — если останется».

Во время недавних DDoS-атак на независимые сайты многие читатели в регионах решили, что проблема в
их телефоне или в операторе. Несколько человек написали нам, что перезагружали телефон и меняли
SIM-карту. Поэтому, считают редакторы, важно не только защищать сайт, но и объяснять читателям,
что происходит, через все доступные каналы.

## Что мы изменим

В ближайшие месяцы мы сделаем облегчённую текстовую версию сайта, добавим полные тексты статей в
RSS-ленту и будем указывать размер страницы для материалов с большим количеством фотографий.
Если вы читаете нас с телефона и хотите что-то предложить, напишите в комментариях — мы читаем их
все.
"""

_LIBRARY_EN = """\
In a village on the southern shore of Issyk-Kul, the public library had not received a new book
since 2014. Its two rooms hold about six thousand volumes, most of them printed before the
librarian, Cholpon, was born. This autumn, a group of teachers and former pupils decided to
change that, and the result has surprised everyone involved.

## A list on the door

It started with a sheet of paper taped to the library door. Cholpon asked readers to write down
the books they wished the library had. Within two weeks the sheet had become six sheets, and the
requests ranged from children's stories in Kyrgyz to textbooks on programming and a Russian
translation of a novel that one teenager had seen mentioned in a film.

"I thought the children only wanted phones," Cholpon told us, laughing. "Then a boy of eleven
asked me whether we had a book about how bridges are built. We did not. Now we do."

A former pupil who works in Bishkek photographed the list and shared it with classmates. Money
and parcels began to arrive: a box from a bookshop in Karakol, another from a family in
Kazakhstan who had spent summers in the village, and several dozen books bought one at a time by
people who simply saw the list online.

## Reading aloud on Saturdays

More than four hundred new books have arrived since September. The library has started a
Saturday morning reading hour for younger children, run by two retired teachers, and a small
club for older pupils who take turns choosing a book and arguing about it.

The volunteers have also begun to record the village's older residents reading stories and
telling local history. The recordings are kept on a laptop in the library, and the plan is to
publish them so that relatives who have moved away can listen.

## Heating and hours

The library's main problem now is not books but winter. The building is heated by a single coal
stove, and on the coldest days the reading room is simply too cold to sit in. The volunteers are
collecting money for a better stove and for insulating the windows, and the village council has
promised to pay for the coal.

Opening hours have been extended to the evening on weekdays, so that pupils can come after
school and adults after work. Cholpon says the evenings are now the busiest time.

"People say nobody reads any more," she said. "Come here on a Tuesday at six and tell me that
again."
"""

ARTICLES: tuple[Article, ...] = (
    Article(
        slug="media-community-statement-ddos",
        lang="en",
        section="media",
        title="Newsrooms left to defend themselves: media community responds to DDoS wave",
        summary=(
            "After attacks took factcheck.kg and every outlet that republished its investigation "
            "offline, editors call on the authorities to find who ordered them."
        ),
        author="Aida Sultanova",
        published=_utc(2020, 12, 15, 8, 30),
        updated=_utc(2020, 12, 15, 14, 10),
        image="img-shield.svg",
        image_alt="A shield in front of a stack of newspapers",
        caption="Illustration: Chyrak",
        tags=("DDoS", "press freedom", "factcheck.kg", "media"),
        body=_STATEMENT_EN,
        comments=(
            Comment(
                "Temir",
                _utc(2020, 12, 15, 10, 2),
                "I could not open Kloop for the whole evening and thought my provider was broken.",
            ),
            Comment(
                "Madina K.",
                _utc(2020, 12, 15, 11, 45),
                "Good that the newsrooms speak with one voice. Republishing is the right answer.",
            ),
            Comment(
                "reader_from_osh",
                _utc(2020, 12, 15, 13, 20),
                "Will there be an English version of the original investigation?",
            ),
        ),
    ),
    Article(
        slug="zayavlenie-media-ddos-ataki",
        lang="ru",
        section="media",
        title="Медиасообщество: редакции вынуждены сами защищаться от DDoS-атак",
        summary=(
            "После атак на factcheck.kg и издания, перепечатавшие его расследование, редакторы "
            "требуют найти заказчиков и защитить свободу прессы."
        ),
        author="Айда Султанова",
        published=_utc(2020, 12, 15, 8, 40),
        updated=_utc(2020, 12, 15, 14, 15),
        image="img-shield.svg",
        image_alt="Щит перед стопкой газет",
        caption="Иллюстрация: «Чырак»",
        tags=("DDoS", "свобода прессы", "factcheck.kg", "медиа"),
        body=_STATEMENT_RU,
        comments=(
            Comment(
                "Бекжан",
                _utc(2020, 12, 15, 9, 55),
                "Весь вечер не открывался ни один сайт, думал, что это у меня телефон.",
            ),
            Comment(
                "Айгерим",
                _utc(2020, 12, 15, 12, 30),
                "Правильно, что вы перепечатываете друг друга. Так и надо.",
            ),
        ),
    ),
    Article(
        slug="som-steady-before-new-year",
        lang="en",
        section="economy",
        title="Som holds steady as year-end demand for dollars rises",
        summary=(
            "The dollar changed hands at about 84.77 som this week. What the rate means for "
            "household budgets, and what money professionals tell their own families."
        ),
        author="Ruslan Abdykadyrov",
        published=_utc(2020, 12, 14, 7, 15),
        updated=_utc(2020, 12, 14, 7, 15),
        image="img-som.svg",
        image_alt="Banknotes and coins on a table",
        caption="Illustration: Chyrak",
        tags=("exchange rate", "som", "household budgets"),
        body=_RATES_EN,
        comments=(
            Comment(
                "Ainura",
                _utc(2020, 12, 14, 9, 5),
                "Thank you for the advice about receipts. My uncle got a fake 100-dollar note.",
            ),
        ),
    ),
    Article(
        slug="zimnyaya-yarmarka-bishkek",
        lang="ru",
        section="society",
        title="В Бишкеке открылась зимняя ярмарка местных производителей",
        summary=(
            "Мёд из Таласа, войлок из Нарына и сыры из Чуйской долины: фермеры продают напрямую, "
            "а покупатели знакомятся с теми, кто делает товар."
        ),
        author="Нургуль Асанова",
        published=_utc(2020, 12, 13, 11, 0),
        updated=_utc(2020, 12, 13, 16, 40),
        image="img-market.svg",
        image_alt="Палатки ярмарки под снегом",
        caption="Иллюстрация: «Чырак»",
        tags=("ярмарка", "фермеры", "Бишкек"),
        body=_FAIR_RU,
        comments=(
            Comment(
                "Жаныл",
                _utc(2020, 12, 13, 18, 12),
                "Были в воскресенье, купили мёд и носки. Очень уютно, спасибо организаторам.",
            ),
            Comment(
                "Саша",
                _utc(2020, 12, 14, 8, 3),
                "А до какого часа работает в будни?",
            ),
        ),
    ),
    Article(
        slug="small-newsroom-website-checklist",
        lang="en",
        section="tech",
        title="Keeping a small newsroom online: a checklist for the one tech person",
        summary=(
            "Backups you have restored, pages that are cheap to serve, and notes to take while "
            "an attack is under way. An afternoon's work that can save a day of readers."
        ),
        author="Daniyar Tokonov",
        published=_utc(2020, 12, 12, 10, 0),
        updated=_utc(2020, 12, 15, 9, 0),
        image="img-keyboard.svg",
        image_alt="A laptop keyboard with a checklist beside it",
        caption="Illustration: Chyrak",
        tags=("security", "websites", "how-to"),
        body=_CHECKLIST_EN,
        comments=(
            Comment(
                "Kanat",
                _utc(2020, 12, 12, 14, 30),
                "The part about restoring backups is so true. We learned it the hard way.",
            ),
            Comment(
                "Elnura",
                _utc(2020, 12, 13, 9, 45),
                "Could you write a follow-up about caching for people who are not programmers?",
            ),
        ),
    ),
    Article(
        slug="mobilnyj-internet-regiony",
        lang="ru",
        section="regions",
        title="Новости в маршрутке: как в регионах читают с телефона",
        summary=(
            "Больше восьмидесяти процентов читателей открывают «Чырак» с телефона. Мы съездили в "
            "три района и узнали, что им мешает."
        ),
        author="Эмиль Жумабеков",
        published=_utc(2020, 12, 11, 6, 45),
        updated=_utc(2020, 12, 11, 6, 45),
        image="img-phone.svg",
        image_alt="Телефон с открытой новостной лентой",
        caption="Иллюстрация: «Чырак»",
        tags=("мобильный интернет", "регионы", "читатели"),
        body=_MOBILE_RU,
        comments=(
            Comment(
                "Гульмира",
                _utc(2020, 12, 11, 12, 0),
                "Узнала себя в первом абзаце. Спасибо, что сделали сайт быстрее.",
            ),
        ),
    ),
    Article(
        slug="issyk-kul-village-library",
        lang="en",
        section="regions",
        title="A list on the door: how one Issyk-Kul village refilled its library",
        summary=(
            "The library had not received a new book since 2014. A sheet of paper on its door "
            "brought in more than four hundred."
        ),
        author="Aida Sultanova",
        published=_utc(2020, 12, 10, 8, 0),
        updated=_utc(2020, 12, 10, 8, 0),
        image="img-books.svg",
        image_alt="A shelf of books under a window with mountains behind",
        caption="Illustration: Chyrak",
        tags=("libraries", "Issyk-Kul", "volunteers"),
        body=_LIBRARY_EN,
        comments=(
            Comment(
                "Cholpon's former pupil",
                _utc(2020, 12, 10, 19, 30),
                "I went to this school. Sending two boxes of books next week!",
            ),
            Comment(
                "Asel",
                _utc(2020, 12, 11, 7, 50),
                "Is there a way to donate for the stove from abroad?",
            ),
        ),
    ),
)

ARTICLES_BY_SLUG: dict[str, Article] = {a.slug: a for a in ARTICLES}
LAST_UPDATED: datetime = max(a.updated for a in ARTICLES)


def search(query: str) -> list[Article]:
    """Articles whose title, summary, tags or text contain every word of the query."""
    words = query.casefold().split()
    if not words:
        return []
    found = []
    for a in ARTICLES:
        text = " ".join((a.title, a.summary, " ".join(a.tags), a.body)).casefold()
        if all(w in text for w in words):
            found.append(a)
    return found


# --- HTML building blocks ---------------------------------------------------------------------


def _e(text: str) -> str:
    return escape(text, quote=True)


def _paragraphs(body: str) -> Iterable[str]:
    for block in body.strip().split("\n\n"):
        lines = block.splitlines()
        if lines[0].startswith("## "):
            yield f"<h2>{_e(' '.join(lines)[3:])}</h2>"
        elif lines[0].startswith("> "):
            quote = " ".join(line.removeprefix("> ") for line in lines)
            yield f"<blockquote><p>{_e(quote)}</p></blockquote>"
        else:
            yield f"<p>{_e(' '.join(lines))}</p>"


def _time(dt: datetime, lang: str) -> str:
    return f'<time datetime="{dt.isoformat()}">{human_date(dt.date(), lang)}</time>'


def _head(lang: str, title: str, description: str, canonical: str) -> str:
    return f"""<!DOCTYPE html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<meta name="description" content="{_e(description)}">
<link rel="canonical" href="{canonical}">
<link rel="stylesheet" href="/assets/style.css">
<link rel="icon" href="/favicon.ico" sizes="32x32">
<link rel="icon" href="/assets/favicon.svg" type="image/svg+xml">
<link rel="alternate" type="application/rss+xml" title="{SITE_NAME}" href="/feed/">
<script src="/assets/site.js" defer></script>
</head>
"""


def _masthead(lang: str, query: str = "") -> str:
    ui = UI[lang]
    nav = "\n".join(
        f'<li><a href="/#section-{key}">{_e(names[lang])}</a></li>'
        for key, names in SECTIONS.items()
    )
    latest = ARTICLES[0]
    lang_field = '<input type="hidden" name="lang" value="ru">' if lang == "ru" else ""
    return f"""<body>
<a class="skip" href="#main">{ui["skip"]}</a>
<header class="masthead">
<div class="masthead-inner">
<a class="logo" href="{"/ru/" if lang == "ru" else "/"}" rel="home">
<img src="/assets/logo.svg" alt="" width="48" height="48"><span>{SITE_NAME}</span></a>
<p class="tagline">{ui["tagline"]}</p>
<p class="dateline">{human_date(RATES_DATE, lang)}</p>
<a class="lang" href="{ui["lang_switch_href"]}">{ui["lang_switch"]}</a>
<form class="search-form" action="/search" method="get" role="search">
<label for="q">{ui["search_label"]}</label>
<input id="q" name="q" type="search" value="{_e(query)}" maxlength="200">{lang_field}
<button type="submit">{ui["search_button"]}</button>
</form>
</div>
<button class="menu-toggle" type="button" aria-expanded="false" aria-controls="sections" hidden>\
&#9776;</button>
<nav id="sections" class="sections" aria-label="Sections">
<ul>
<li><a href="{"/ru/" if lang == "ru" else "/"}">{ui["home"]}</a></li>
{nav}
</ul>
</nav>
<p class="ticker"><strong>{ui["breaking"]}</strong>
<a href="{latest.path}" lang="{latest.lang}">{_e(latest.title)}</a></p>
</header>
"""


def _rates_box(lang: str) -> str:
    ui = UI[lang]
    rows = "\n".join(
        f'<tr><th scope="row">{code}</th><td data-rate="{code}">{value}</td></tr>'
        for code, value in RATES
    )
    caption = ui["rates_caption"].format(date=human_date(RATES_DATE, lang))
    return f"""<section class="box rates" aria-labelledby="rates-title">
<h2 id="rates-title">{ui["rates"]}</h2>
<table>
<caption>{caption}</caption>
<thead><tr><th scope="col">{ui["currency"]}</th><th scope="col">KGS</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
</section>
"""


def _sidebar(lang: str) -> str:
    ui = UI[lang]
    most_read = "\n".join(
        f'<li><a href="{a.path}" lang="{a.lang}">{_e(a.title)}</a></li>'
        for a in sorted(ARTICLES, key=lambda a: (len(a.comments), a.published), reverse=True)[:5]
    )
    return f"""<aside class="sidebar">
{_rates_box(lang)}<section class="box most-read">
<h2>{ui["most_read"]}</h2>
<ol>
{most_read}
</ol>
</section>
<section class="box newsletter">
<h2>{ui["newsletter"]}</h2>
<p>{ui["newsletter_text"]}</p>
</section>
<section class="box about">
<h2>{ui["about"]}</h2>
<p>{ui["about_text"]}</p>
<p><a href="/feed/">{ui["feed"]}</a></p>
</section>
</aside>
"""


def _footer(lang: str) -> str:
    ui = UI[lang]
    sections = " ".join(
        f'<a href="/#section-{key}">{_e(names[lang])}</a>' for key, names in SECTIONS.items()
    )
    return f"""<footer class="site-footer">
<nav aria-label="Footer">
<p>{sections}</p>
<p><a href="/feed/">{ui["feed"]}</a> <a href="/sitemap.xml">Sitemap</a>
<a href="/search">{ui["archive"]}</a> <a href="/#contacts">{ui["contacts"]}</a>
<a href="/#privacy">{ui["privacy"]}</a></p>
</nav>
<p class="disclaimer">{ui["footer_note"]}</p>
<p id="privacy">{_e(_PRIVACY[lang])}</p>
<p id="contacts">Chyrak, 1 Erkindik Boulevard, Bishkek · editor@chyrak.example</p>
<p>&copy; 2020 {SITE_NAME}</p>
</footer>
</body>
</html>
"""


_PRIVACY = {
    "en": (
        "This site sets no tracking cookies and loads nothing from other companies: every font, "
        "script and picture comes from our own server."
    ),
    "ru": (
        "Сайт не ставит отслеживающих cookie и ничего не загружает с чужих серверов: все шрифты, "
        "скрипты и картинки лежат у нас."
    ),
}


def _card(a: Article, lang: str, *, lead: bool = False) -> str:
    cls = "card lead" if lead else "card"
    section = SECTIONS[a.section][lang]
    return f"""<article class="{cls}" lang="{a.lang}">
<a href="{a.path}"><img src="/assets/{a.image}" alt="{_e(a.image_alt)}" width="400" height="225"
loading="lazy"></a>
<p class="kicker">{_e(section)}</p>
<h3><a href="{a.path}">{_e(a.title)}</a></h3>
<p>{_e(a.summary)}</p>
<p class="meta">{_e(a.author)} · {_time(a.published, a.lang)} · {_comment_count(a)}</p>
</article>
"""


def _comment_count(a: Article) -> str:
    n = len(a.comments)
    if a.lang == "ru":
        return f"{n} комм."
    return f"{n} comment" if n == 1 else f"{n} comments"


# --- pages ------------------------------------------------------------------------------------


def render_home(lang: str = "en") -> str:
    """The front page: lead story, latest news, one block per section, rates in the sidebar."""
    ui = UI[lang]
    lead, *rest = ARTICLES
    blocks = []
    for key, names in SECTIONS.items():
        items = "\n".join(
            f'<li lang="{a.lang}"><a href="{a.path}">{_e(a.title)}</a> '
            f"<span>{_e(a.summary)}</span></li>"
            for a in ARTICLES
            if a.section == key
        )
        blocks.append(
            f'<section class="section-block" id="section-{key}">\n'
            f"<h2>{_e(names[lang])}</h2>\n<ul>\n{items}\n</ul>\n</section>"
        )
    title = f"{SITE_NAME}: {ui['tagline']}"
    return (
        _head(lang, title, ui["tagline"], "/ru/" if lang == "ru" else "/")
        + _masthead(lang)
        + f"""<div class="layout">
<main id="main">
<h1 class="visually-hidden">{SITE_NAME}</h1>
<section class="top-stories" aria-label="{ui["latest"]}">
{_card(lead, lang, lead=True)}</section>
<h2>{ui["latest"]}</h2>
<div class="cards">
{"".join(_card(a, lang) for a in rest)}</div>
{chr(10).join(blocks)}
</main>
{_sidebar(lang)}</div>
"""
        + _footer(lang)
    )


def render_article(a: Article) -> str:
    ui = UI[a.lang]
    body = "\n".join(_paragraphs(a.body))
    tags = ", ".join(f'<a href="/search?q={quote_plus(t)}" rel="tag">{_e(t)}</a>' for t in a.tags)
    if a.comments:
        comments = "\n".join(
            f'<li class="comment"><p class="comment-meta"><strong>{_e(c.author)}</strong> · '
            f"{_time(c.posted, a.lang)}</p><p>{_e(c.text)}</p></li>"
            for c in a.comments
        )
        comments = f'<ol class="comment-list">\n{comments}\n</ol>'
    else:
        comments = f"<p>{ui['no_comments']}</p>"
    related = "\n".join(_card(r, a.lang) for r in ARTICLES if r is not a)
    updated = ""
    if a.updated != a.published:
        updated = f" · {ui['updated']} {_time(a.updated, a.lang)}"
    return (
        _head(a.lang, f"{a.title} — {SITE_NAME}", a.summary, a.path)
        + _masthead(a.lang)
        + f"""<div class="layout">
<main id="main">
<article class="story">
<p class="kicker"><a href="/#section-{a.section}">{_e(SECTIONS[a.section][a.lang])}</a></p>
<h1>{_e(a.title)}</h1>
<p class="standfirst">{_e(a.summary)}</p>
<p class="byline">{ui["by"]} <span class="author">{_e(a.author)}</span> · \
{_time(a.published, a.lang)}{updated}</p>
<figure>
<img src="/assets/{a.image}" alt="{_e(a.image_alt)}" width="800" height="450">
<figcaption>{_e(a.caption)}</figcaption>
</figure>
<div class="story-body">
{body}
</div>
<p class="tags">{ui["tags"]}: {tags}</p>
<section class="share" aria-label="{ui["share"]}">
<h2>{ui["share"]}</h2>
<p><button type="button" class="copy-link" data-url="{a.path}" hidden>{ui["copy_link"]}</button>
<a href="{a.path}" class="permalink">{a.path}</a> · <a href="/feed/">{ui["feed"]}</a> ·
<a href="#main" class="print-link">{ui["print"]}</a></p>
<p class="note">{ui["share_note"]}</p>
</section>
<div class="author-box">
<img src="/assets/logo.svg" alt="" width="40" height="40">
<p><strong>{_e(a.author)}</strong> {ui["author_about"]}</p>
</div>
<section class="comments" id="comments">
<h2>{ui["comments"]} ({len(a.comments)})</h2>
{comments}
<h3>{ui["leave_comment"]}</h3>
<p class="note">{ui["comment_rules"]}</p>
<form class="comment-form" action="/comments" method="post">
<input type="hidden" name="article" value="{a.slug}">
<p><label for="author">{ui["name"]}</label>
<input id="author" name="author" type="text" maxlength="60" required></p>
<p><label for="comment">{ui["comment"]}</label>
<textarea id="comment" name="comment" rows="6" maxlength="2000" required></textarea>
<span class="counter" aria-live="polite"></span></p>
<p><button type="submit">{ui["send"]}</button></p>
</form>
</section>
</article>
<section class="related">
<h2>{ui["more"]}</h2>
<div class="cards">
{related}</div>
</section>
</main>
{_sidebar(a.lang)}</div>
"""
        + _footer(a.lang)
    )


def render_search(query: str, results: list[Article], lang: str = "en") -> str:
    ui = UI[lang]
    q = query.strip()[:200]
    if not q:
        heading, intro, cards = ui["search"], f"<p>{ui['search_intro']}</p>", ARTICLES[:3]
    elif results:
        heading = ui["results_for"].format(q=_e(q))
        intro, cards = f"<p>{ui['results_count'].format(n=len(results))}</p>", tuple(results)
    else:
        heading, intro, cards = ui["results_for"].format(q=_e(q)), f"<p>{ui['no_results']}</p>", ()
    latest = "" if cards else "".join(_card(a, lang) for a in ARTICLES[:4])
    return (
        _head(lang, f"{ui['search']} — {SITE_NAME}", ui["search_intro"], "/search")
        + _masthead(lang, q)
        + f"""<div class="layout">
<main id="main">
<h1>{heading}</h1>
{intro}
<div class="cards">
{"".join(_card(a, lang) for a in cards)}{latest}</div>
</main>
{_sidebar(lang)}</div>
"""
        + _footer(lang)
    )


def render_message(lang: str, title: str, message: str) -> str:
    """A simple page with one message (comment received, page not found, form errors)."""
    ui = UI[lang]
    cards = "".join(_card(a, lang) for a in ARTICLES[:4])
    return (
        _head(lang, f"{title} — {SITE_NAME}", title, "/")
        + _masthead(lang)
        + f"""<div class="layout">
<main id="main">
<h1>{_e(title)}</h1>
<p class="message">{_e(message)}</p>
<h2>{ui["latest"]}</h2>
<div class="cards">
{cards}</div>
</main>
{_sidebar(lang)}</div>
"""
        + _footer(lang)
    )


def render_not_found() -> str:
    return render_message(
        "en",
        "Page not found",
        "We could not find that page. It may have moved, or the address may be mistyped. Try "
        "the search box above.",
    )


def render_comment_received(a: Article, author: str) -> str:
    if a.lang == "ru":
        title = "Спасибо за комментарий"
        text = f"{author}, ваш комментарий к статье «{a.title}» появится после проверки."
    else:
        title = "Thank you for your comment"
        text = (
            f"{author}, your comment on \u201c{a.title}\u201d will appear once an editor "
            "approves it."
        )
    return render_message(a.lang, title, text)


def render_comment_rejected(reason: str) -> str:
    return render_message("en", "Your comment was not sent", reason)


def render_login(failed: bool = False) -> str:
    """A look-alike of a CMS login page: a target for credential-stuffing floods."""
    error = ""
    if failed:
        error = (
            '<p class="login-error" role="alert"><strong>Error:</strong> the username or password '
            "you entered is incorrect.</p>\n"
        )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow">
<title>Log in — {SITE_NAME}</title>
<link rel="stylesheet" href="/assets/style.css">
</head>
<body class="login">
<main id="main" class="login-box">
<h1><a href="/"><img src="/assets/logo.svg" alt="{SITE_NAME}" width="64" height="64"></a></h1>
{error}<form action="/wp-login.php" method="post">
<p><label for="user_login">Username or email address</label>
<input id="user_login" name="log" type="text" autocomplete="username" required></p>
<p><label for="user_pass">Password</label>
<input id="user_pass" name="pwd" type="password" autocomplete="current-password" required></p>
<p><label><input name="rememberme" type="checkbox" value="forever"> Remember me</label></p>
<p><button type="submit">Log in</button></p>
</form>
<p><a href="/">&larr; Back to {SITE_NAME}</a></p>
</main>
</body>
</html>
"""


XMLRPC_FAULT = """<?xml version="1.0" encoding="UTF-8"?>
<methodResponse>
  <fault>
    <value>
      <struct>
        <member><name>faultCode</name><value><int>403</int></value></member>
        <member><name>faultString</name><value><string>Incorrect username or password.</string>\
</value></member>
      </struct>
    </value>
  </fault>
</methodResponse>
"""


def bench_page(size: int) -> bytes:
    """A plain HTML page of exactly `size` bytes, for benchmarks that need a fixed body."""
    head = (
        b'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        b"<title>Benchmark page</title>\n</head>\n<body>\n<p>"
    )
    tail = b"</p>\n</body>\n</html>\n"
    filler = b"Readers keep reading while the shield holds. "
    room = size - len(head) - len(tail)
    if room < 0:
        raise ValueError(f"a page needs at least {len(head) + len(tail)} bytes")
    return head + (filler * (room // len(filler) + 1))[:room] + tail


# --- feeds and files for machines -------------------------------------------------------------


def render_feed(base: str) -> str:
    """RSS 2.0 with every article; `base` is the site's absolute URL without a trailing slash."""
    items = "\n".join(
        f"""<item>
<title>{_e(a.title)}</title>
<link>{base}{a.path}</link>
<guid isPermaLink="true">{base}{a.path}</guid>
<pubDate>{format_datetime(a.published, usegmt=True)}</pubDate>
<dc:creator>{_e(a.author)}</dc:creator>
<dc:language>{a.lang}</dc:language>
<category>{_e(SECTIONS[a.section]["en"])}</category>
<description>{_e(a.summary)}</description>
</item>"""
        for a in ARTICLES
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0" xmlns:atom="http://www.w3.org/2005/Atom" \
xmlns:dc="http://purl.org/dc/elements/1.1/">
<channel>
<title>{SITE_NAME}</title>
<link>{base}/</link>
<atom:link href="{base}/feed/" rel="self" type="application/rss+xml"/>
<description>{UI["en"]["tagline"]}</description>
<language>en</language>
<lastBuildDate>{format_datetime(LAST_UPDATED, usegmt=True)}</lastBuildDate>
<ttl>5</ttl>
{items}
</channel>
</rss>
"""


def render_sitemap(base: str) -> str:
    def url(path: str, modified: datetime, freq: str) -> str:
        return (
            f"<url><loc>{base}{path}</loc><lastmod>{modified.date().isoformat()}</lastmod>"
            f"<changefreq>{freq}</changefreq></url>"
        )

    urls = [url("/", LAST_UPDATED, "hourly"), url("/ru/", LAST_UPDATED, "hourly")]
    urls += [url(a.path, a.updated, "weekly") for a in ARTICLES]
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">\n'
        + "\n".join(urls)
        + "\n</urlset>\n"
    )


def render_robots(base: str) -> str:
    return f"""User-agent: *
Disallow: /wp-admin/
Allow: /wp-admin/admin-ajax.php
Disallow: /search
Disallow: /_demo/

Sitemap: {base}/sitemap.xml
"""
