"""The built-in synthetic shop: about 18 months of an e-commerce shop's after-sales data.

Why a simulator: every later step (ingestion, features, labels, models, reports) needs data with
known answers. ``generate_shop`` writes all eight source tables of ``schemas/sources.py`` with
believable volume, seasonality and customer archetypes, plus causal effects planted on purpose
(recorded in ``_planted.json``, archetype membership in ``_archetypes.csv``) and dirty rows (listed
in ``_dirty_manifest.csv``) so that each part of the platform can be checked against the truth.

How it stays fast at a million customers: customers are simulated in *rounds* (round k = the k-th
order of every customer still buying), each round a handful of numpy operations over all active
customers, so the experience of one order (late parcel, unresolved ticket, bad review) can decide
whether the customer orders again. Text, events and files are then built in bulk with numpy and
pyarrow; events are written in row groups. The only Python loops run over rounds, tables, a few
hundred products and the (few) dirty rows.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from schemas.sources import (
    EVENT_TYPES,
    ORDER_STATUSES,
    PAYMENT_TYPES,
    RETURN_REASONS,
    RETURN_STATUSES,
    SOURCE_TABLES,
    TABLES,
    TICKET_CATEGORIES,
    TICKET_CHANNELS,
    Customers,
    Events,
    OrderItems,
    Orders,
    Products,
    Returns,
    Reviews,
    Tickets,
)

FileFormat = Literal["csv", "parquet"]
Arrays = dict[str, np.ndarray]

DAY = 86_400
HOUR = 3_600
MINUTE = 60
NULL_T = np.iinfo(np.int64).min  # a timestamp that has not happened (yet)
TS_TEXT = "%Y-%m-%d %H:%M:%S"
EVENT_CHUNK_ROWS = 2_000_000
DIRTY_MANIFEST = "_dirty_manifest.csv"
PLANTED_FILE = "_planted.json"
ARCHETYPES_FILE = "_archetypes.csv"
BATCH_MANIFEST = "_batch.json"
# Ingestion rejects timestamps later than the export + 24 h except a delivery promise, which may
# lie in the future; a promise further out than this is left empty (an unusually fresh order).
PROMISE_VISIBLE_AFTER_END = 30 * DAY

# --- the shop's world -------------------------------------------------------------------------

ARCHETYPES = [
    "one_time",
    "regular",
    "loyal",
    "discount_hunter",
    "new_adopter",
    "dormant",
    "complainer",
    "cart_abandoner",
]
ONE_TIME, REGULAR, LOYAL, HUNTER, ADOPTER, DORMANT, COMPLAINER, ABANDONER = range(len(ARCHETYPES))
ARCHETYPE_SHARE = np.array([0.38, 0.20, 0.12, 0.08, 0.06, 0.07, 0.04, 0.05])
MEAN_GAP_DAYS = np.array([60.0, 120.0, 28.0, 50.0, 55.0, 40.0, 85.0, 250.0])  # between orders
BASE_QUIT = np.array([1.0, 0.07, 0.01, 0.04, 0.04, 0.03, 0.06, 0.2])  # after any order
ABANDONED_PER_YEAR = np.array([0.35, 0.5, 0.8, 1.2, 1.0, 0.35, 0.5, 6.0])
SIZE_CHART_P = np.array([0.4, 0.45, 0.6, 0.3, 0.5, 0.45, 0.4, 0.4])

REGIONS = ["Shanghai", "Beijing", "Guangdong", "Zhejiang", "Hong Kong", "Singapore", "London",
           "New York", "California", "Sydney"]
REGION_WEIGHT = np.array([0.13, 0.11, 0.12, 0.08, 0.06, 0.06, 0.12, 0.12, 0.12, 0.08])
REGION_ZH_SHARE = np.array([0.93, 0.93, 0.9, 0.9, 0.55, 0.35, 0.06, 0.08, 0.12, 0.1])
REGION_PROMISE_DAYS = np.array([2, 2, 3, 3, 3, 4, 4, 4, 4, 5])
LANGS = ["en", "zh"]

CARRIERS = ["SwiftShip", "ParcelPro", "EcoPost", "RapidRoute", "CityCourier"]
LATE_CARRIER = 1  # ParcelPro: behind most late deliveries
CARRIER_LATE_P = np.array([0.04, 0.45, 0.06, 0.035, 0.05])
_ZH_CARRIERS = [0.30, 0.30, 0.12, 0.18, 0.10]
_EN_CARRIERS = [0.28, 0.24, 0.22, 0.16, 0.10]
REGION_CARRIER_CUM = np.cumsum(
    [_ZH_CARRIERS if z > 0.5 else _EN_CARRIERS for z in REGION_ZH_SHARE], axis=1
)

PAYMENT_CUM = np.cumsum(
    [
        [0.50, 0.25, 0.08, 0.03, 0.03, 0.10, 0.01],  # en
        [0.20, 0.03, 0.60, 0.08, 0.04, 0.04, 0.01],  # zh
        [0.30, 0.15, 0.20, 0.02, 0.01, 0.31, 0.01],  # discount hunters favour buy-now-pay-later
    ],
    axis=1,
)

TEAMS = ["Team Lotus", "Team Maple", "Team Pine", "Team Willow"]
SLOW_TEAM = 2  # Team Pine: slow first response, escalations, unhappy customers
TEAM_P = np.array([0.27, 0.26, 0.25, 0.22])
CHANNEL_P = np.array([0.40, 0.25, 0.15, 0.07, 0.11, 0.02])
CHANNEL_RESPONSE_FACTOR = np.array([0.3, 1.0, 0.1, 1.2, 1.0, 1.5])

CATEGORIES = ["apparel", "shoes", "electronics", "home", "beauty", "food"]
APPAREL, SHOES, ELECTRONICS, HOME, BEAUTY, FOOD = range(len(CATEGORIES))
CATEGORY_SHARE = np.array([0.25, 0.12, 0.18, 0.20, 0.13, 0.12])
PRICE_MEDIAN = np.array([45.0, 90.0, 160.0, 60.0, 28.0, 14.0])
CHANGED_MIND_FACTOR = np.array([1.3, 1.2, 0.8, 0.7, 0.5, 0.2])
BRANDS = [
    ["Northwind", "Lumen", "Urban Fox", "Kite & Co", "Maison Lin"],
    ["Stride", "Peakline", "Cloudstep", "Runway"],
    ["Nova", "Voltix", "Zenith", "Pixelon"],
    ["Hearth", "Casa Verde", "Brewline", "Nestwell"],
    ["Glowry", "Petal & Pure", "Lumi", "Skinsmith"],
    ["Golden Harvest", "Tea Garden", "Nutri Farm", "Cocoa Lane"],
]
PRODUCT_TYPES = [
    [("T-Shirt", "T恤"), ("Jeans", "牛仔裤"), ("Hoodie", "连帽卫衣"), ("Dress", "连衣裙"),
     ("Jacket", "夹克"), ("Sweater", "毛衣"), ("Shirt", "衬衫"), ("Leggings", "打底裤")],
    [("Running Shoes", "跑鞋"), ("Sneakers", "运动鞋"), ("Boots", "靴子"), ("Sandals", "凉鞋"),
     ("Loafers", "乐福鞋")],
    [("Phone", "手机"), ("Earbuds", "耳机"), ("Power Bank", "充电宝"), ("Smartwatch", "智能手表"),
     ("Charger", "充电器"), ("Bluetooth Speaker", "蓝牙音箱"), ("Tablet", "平板电脑")],
    [("Air Fryer", "空气炸锅"), ("Bedding Set", "床上四件套"), ("Desk Lamp", "台灯"),
     ("Storage Box", "收纳箱"), ("Kettle", "电水壶"), ("Vacuum Cleaner", "吸尘器")],
    [("Face Cream", "面霜"), ("Serum", "精华液"), ("Lipstick", "口红"), ("Sunscreen", "防晒霜"),
     ("Shampoo", "洗发水")],
    [("Green Tea", "绿茶"), ("Coffee Beans", "咖啡豆"), ("Mixed Nuts", "坚果礼盒"),
     ("Olive Oil", "橄榄油"), ("Dark Chocolate", "黑巧克力")],
]
MODEL_WORDS = ["Classic", "Lite", "Pro", "Air", "Max", "Plus", "Essential", "Urban", "Eco", "Prime",
               "Mini", "Studio"]
APPAREL_SIZES = ["XS", "S", "M", "L", "XL", "XXL"]
APPAREL_SIZE_P = np.array([0.06, 0.2, 0.3, 0.25, 0.13, 0.06])
SHOE_SIZES = [str(s) for s in range(36, 46)]
SHOE_SIZE_P = np.array([0.04, 0.08, 0.11, 0.13, 0.14, 0.14, 0.13, 0.11, 0.07, 0.05])
SIZES = APPAREL_SIZES + SHOE_SIZES

MONTH_FACTOR = np.array([0.85, 0.8, 0.9, 0.92, 0.95, 1.05, 0.95, 0.95, 1.0, 1.05, 1.45, 1.55])
WEEKDAY_FACTOR = np.array([1.0, 0.95, 0.95, 1.0, 1.05, 1.12, 1.15])  # Monday first
HOUR_FACTOR = np.array([0.35, 0.2, 0.12, 0.1, 0.1, 0.15, 0.3, 0.55, 0.8, 0.95, 1.05, 1.15, 1.4, 1.3,
                        1.1, 1.05, 1.05, 1.1, 1.2, 1.4, 1.6, 1.65, 1.3, 0.75])  # local time


@dataclass(frozen=True)
class PlantedProduct:
    """A product with a planted story; ``index`` fixes its id (P0042 is index 41) for every seed."""

    index: int
    name: str
    name_zh: str
    category: int
    brand: str
    price: float
    launch_days_after_start: float
    popularity_rank: int

    @property
    def product_id(self) -> str:
        return f"P{self.index + 1:04d}"


GARMENT = PlantedProduct(41, "Urban Fox Slim-Fit Jeans", "Urban Fox修身牛仔裤", APPAREL, "Urban Fox",
                         59.99, -400, 2)
PHONE = PlantedProduct(116, "Nova X5 Phone", "Nova X5手机", ELECTRONICS, "Nova", 699.0, -90, 5)
FOOD_JAR = PlantedProduct(162, "Golden Harvest Glass-Jar Honey", "Golden Harvest玻璃罐蜂蜜", FOOD,
                          "Golden Harvest", 17.99, -500, 3)
MANUAL = PlantedProduct(207, "Brewline Barista Coffee Machine", "Brewline咖啡机", HOME, "Brewline",
                        229.0, 45, 8)
PLANTED_PRODUCTS = [GARMENT, PHONE, FOOD_JAR, MANUAL]
PHONE_SPIKE_WEEKS_BEFORE_END = 22
MANUAL_FIX_DAYS_BEFORE_END = 75

# return reasons, in RETURN_REASONS order
R_SIZE, R_QUALITY, R_NAD, R_DAMAGED, R_LATE, R_MIND, R_OTHER = range(len(RETURN_REASONS))
# ticket categories, in TICKET_CATEGORIES order
(TK_DELIVERY, TK_DEFECT, TK_SIZE, TK_REFUND, TK_USAGE, TK_PAYMENT, TK_ACCOUNT, TK_SERVICE,
 TK_OTHER) = range(len(TICKET_CATEGORIES))
ORDER_PLACED, ORDER_SHIPPED, ORDER_DELIVERED, ORDER_CANCELLED = (
    ORDER_STATUSES.index(s) for s in ("placed", "shipped", "delivered", "cancelled")
)
(EV_VIEW, EV_SEARCH, EV_ADD, EV_REMOVE, EV_SIZE_CHART, EV_POLICY, EV_SUPPORT, EV_CHECKOUT) = (
    EVENT_TYPES.index(s) for s in ("product_view", "search", "add_to_cart", "remove_from_cart",
                                   "view_size_chart", "view_return_policy", "contact_support",
                                   "checkout")
)

# --- phrase banks: texts in the customer's language that match the reason ---------------------

TOPICS = ["size_fit", "quality_defect", "not_as_described", "logistics_late", "damaged_packaging",
          "service_attitude", "price_value", "praise", "changed_mind", "usage_question",
          "return_refund", "payment", "account", "other", "mixed", "phone_fault"]
T = {name: i for i, name in enumerate(TOPICS)}
REASON_TOPIC = np.array([T["size_fit"], T["quality_defect"], T["not_as_described"],
                         T["damaged_packaging"], T["logistics_late"], T["changed_mind"], T["other"]])
TICKET_TOPIC = np.array([T["logistics_late"], T["quality_defect"], T["size_fit"], T["return_refund"],
                         T["usage_question"], T["payment"], T["account"], T["service_attitude"],
                         T["other"]])
BAD_REVIEW_P = np.zeros(len(TOPICS))
for _topic, _p in {"size_fit": 0.45, "quality_defect": 0.7, "not_as_described": 0.6,
                   "logistics_late": 0.6, "damaged_packaging": 0.75, "service_attitude": 0.65,
                   "changed_mind": 0.08, "other": 0.3, "phone_fault": 0.8}.items():
    BAD_REVIEW_P[T[_topic]] = _p

# "{p}" is replaced by the product's name in the customer's language
PHRASES: dict[str, dict[str, tuple[list[str], list[str]]]] = {
    "size_fit": {
        "en": ([
            "The {p} runs at least one size small.",
            "Ordered my usual size but the {p} is far too tight.",
            "The {p} is much smaller than the size chart says.",
            "Sizing is way off, the {p} does not fit at all.",
            "Too tight around the shoulders and the sleeves are short.",
            "The {p} fits like a child's size.",
            "Had to send the {p} back because it is too small.",
            "The fit is strange, too narrow at the waist and too long in the legs.",
        ], [
            "I usually wear a medium and this feels like an extra small.",
            "Next time I will check the size chart first.",
            "Other items from the same brand fit me fine.",
            "The measurements on the page are not accurate.",
            "I would size up at least once.",
        ]),
        "zh": ([
            "{p}尺码偏小，至少小一码。",
            "按平时的尺码买的，{p}穿上太紧了。",
            "{p}比尺码表上写的小很多。",
            "尺码完全不对，{p}根本穿不上。",
            "肩膀太紧，袖子也短。",
            "{p}版型很奇怪，腰太窄，裤腿太长。",
            "{p}太小了，只能退货。",
            "码数不标准，和描述的不一样。",
        ], [
            "平时穿M码，这件感觉像XS。",
            "下次一定先看尺码表。",
            "同品牌其他衣服都合身。",
            "页面上的尺寸数据不准确。",
            "建议大家拍大一码。",
        ]),
    },
    "quality_defect": {
        "en": ([
            "The {p} stopped working after two days.",
            "The {p} broke the first time I used it.",
            "Poor quality, the stitching on the {p} is coming apart.",
            "The {p} has a defect right out of the box.",
            "The material feels cheap and started peeling after a week.",
            "The zipper on the {p} broke immediately.",
            "The {p} makes a strange noise and then turns off.",
            "Quality control is terrible, the {p} arrived faulty.",
        ], [
            "I have only used it a handful of times.",
            "A replacement would be fine, but I want it fixed.",
            "It looks like a manufacturing problem.",
            "My previous one lasted for years.",
            "Really disappointed with the build quality.",
        ]),
        "zh": ([
            "{p}用了两天就坏了。",
            "{p}第一次用就出问题了。",
            "质量太差，{p}的线头都开了。",
            "{p}开箱就有瑕疵。",
            "材质很廉价，一周就开始掉皮。",
            "{p}的拉链一拉就坏。",
            "{p}有异响，然后自动关机。",
            "品控太差，收到的{p}是坏的。",
        ], [
            "总共才用了几次。",
            "换新也可以，但希望尽快解决。",
            "看起来是做工问题。",
            "之前买的用了好几年都没事。",
            "对做工非常失望。",
        ]),
    },
    "not_as_described": {
        "en": ([
            "The {p} looks nothing like the photos.",
            "The colour of the {p} is completely different from the picture.",
            "The description says cotton but the {p} is clearly synthetic.",
            "The {p} is a different model from the one listed.",
            "Much smaller than described, the pictures are misleading.",
            "The features listed on the page are missing on the {p}.",
        ], [
            "The listing should be updated.",
            "I feel misled by the product page.",
            "The photos must be heavily edited.",
            "Nothing like what I expected from the description.",
        ]),
        "zh": ([
            "{p}和图片完全不一样。",
            "{p}颜色和图片差别很大。",
            "描述说是纯棉，收到的{p}明显是化纤。",
            "收到的{p}和页面上的型号不一样。",
            "实物比描述小很多，图片误导人。",
            "页面上写的功能{p}都没有。",
        ], [
            "商品详情页应该更新一下。",
            "感觉被详情页骗了。",
            "图片修得太厉害了。",
            "和描述的完全不符。",
        ]),
    },
    "logistics_late": {
        "en": ([
            "The parcel arrived a week late.",
            "Delivery took far longer than promised.",
            "My order is still not here and the tracking has not moved for days.",
            "The courier missed the promised delivery date.",
            "Waited ages for the {p} to arrive.",
            "Tracking said delivered but nothing arrived for three more days.",
            "Shipping was extremely slow.",
            "Where is my parcel? It was due days ago.",
        ], [
            "The delivery company never answered the phone.",
            "I needed it for a trip and it came too late.",
            "The courier kept rescheduling.",
            "I will avoid this delivery option next time.",
            "The product itself is fine, the delivery was the problem.",
        ]),
        "zh": ([
            "快递晚了一个星期才到。",
            "发货太慢，比承诺的时间晚了很多。",
            "到现在还没收到，物流好几天没更新了。",
            "快递没有按承诺的日期送达。",
            "等{p}等了好久。",
            "物流显示已签收，结果又过了三天才收到。",
            "物流速度太慢了。",
            "我的包裹呢？早就该到了。",
        ], [
            "快递员电话一直打不通。",
            "本来出门要用的，结果到晚了。",
            "快递一直改派送时间。",
            "下次不会再选这个快递了。",
            "东西本身还行，问题出在物流。",
        ]),
    },
    "damaged_packaging": {
        "en": ([
            "The {p} arrived broken.",
            "The jar was shattered and the contents leaked everywhere.",
            "The box was crushed and the {p} inside was damaged.",
            "Packaging was far too thin, the {p} cracked in transit.",
            "Half of the order arrived smashed.",
            "The seal of the {p} was broken when it arrived.",
        ], [
            "There was almost no padding in the box.",
            "Sticky mess all over the parcel.",
            "Please use better packaging.",
            "The outer box looked like it had been dropped.",
        ]),
        "zh": ([
            "收到的{p}是碎的。",
            "罐子碎了，里面的东西漏得到处都是。",
            "箱子被压扁了，里面的{p}也坏了。",
            "包装太薄，{p}在运输中裂开了。",
            "一半的东西到的时候已经摔碎了。",
            "收到时{p}的封口已经破了。",
        ], [
            "箱子里几乎没有缓冲材料。",
            "整个包裹都黏糊糊的。",
            "请改进包装。",
            "外箱看起来被摔过。",
        ]),
    },
    "service_attitude": {
        "en": ([
            "Customer service took days to reply.",
            "The support agent was rude and unhelpful.",
            "Nobody from support ever solved my problem.",
            "I had to explain the issue five times to different agents.",
            "The service team kept sending copy-paste answers.",
            "My complaint was closed without any solution.",
        ], [
            "Terrible after-sales experience.",
            "I expected much better service.",
            "Still waiting for a real answer.",
            "The chat kept disconnecting.",
        ]),
        "zh": ([
            "客服好几天才回复。",
            "客服态度很差，一点都不帮忙。",
            "客服始终没有解决我的问题。",
            "同一个问题跟不同客服讲了五遍。",
            "客服一直复制粘贴模板回复。",
            "投诉没解决就被关闭了。",
        ], [
            "售后体验太差了。",
            "本来期待更好的服务。",
            "到现在还在等一个答复。",
            "在线客服一直断线。",
        ]),
    },
    "price_value": {
        "en": ([
            "The {p} is overpriced for what you get.",
            "Not worth the money.",
            "The price dropped right after I bought the {p}.",
            "Decent, but too expensive for this quality.",
            "You can find better value elsewhere.",
        ], [
            "I would only buy it again on sale.",
            "The discount was not really a discount.",
            "Expected more at this price.",
        ]),
        "zh": ([
            "{p}性价比太低。",
            "不值这个价。",
            "刚买完{p}就降价了。",
            "还行，但这个质量卖这个价太贵了。",
            "别家性价比更高。",
        ], [
            "只有打折才会再买。",
            "所谓的优惠根本不划算。",
            "这个价格应该更好才对。",
        ]),
    },
    "praise": {
        "en": ([
            "Love the {p}, exactly as described.",
            "Great quality and fast delivery.",
            "The {p} fits perfectly.",
            "Very happy with the {p}.",
            "Excellent value for money.",
            "Arrived quickly and well packed.",
            "Works perfectly, would buy again.",
            "The {p} exceeded my expectations.",
        ], [
            "Already ordered another one for my sister.",
            "Customer service was quick and friendly.",
            "Highly recommend this shop.",
            "Will definitely buy from this brand again.",
            "Five stars from me.",
        ]),
        "zh": ([
            "非常喜欢这个{p}，和描述一致。",
            "质量很好，发货也快。",
            "{p}尺码刚刚好。",
            "对{p}非常满意。",
            "性价比超高。",
            "到货很快，包装也很好。",
            "用起来很好，会回购。",
            "{p}超出预期。",
        ], [
            "已经给家人也买了一个。",
            "客服回复又快又热情。",
            "强烈推荐这家店。",
            "以后还会买这个牌子。",
            "五星好评。",
        ]),
    },
    "changed_mind": {
        "en": ([
            "I changed my mind about the {p}.",
            "Found a better option elsewhere.",
            "Ordered two colours and kept only one.",
            "No longer need the {p}.",
            "Bought it on impulse during the sale.",
        ], [
            "The item itself is fine.",
            "Nothing wrong with it, I just do not want it.",
            "Sorry for the trouble.",
        ]),
        "zh": ([
            "不想要{p}了。",
            "在别家找到更合适的了。",
            "买了两个颜色，只留一个。",
            "已经用不上{p}了。",
            "大促的时候冲动消费了。",
        ], [
            "商品本身没问题。",
            "东西没毛病，就是不想要了。",
            "麻烦了。",
        ]),
    },
    "usage_question": {
        "en": ([
            "How do I set up the {p}? The manual does not explain it.",
            "The instruction manual for the {p} is confusing.",
            "I cannot figure out how to descale the {p}.",
            "The quick start guide skips the pairing step.",
            "Which button resets the {p}? The manual is unclear.",
            "The {p} shows an error code that is not in the manual.",
        ], [
            "The diagrams are too small to read.",
            "Is there a video guide somewhere?",
            "The manual only has one page in my language.",
            "I followed every step and it still does not work.",
        ]),
        "zh": ([
            "{p}怎么设置？说明书里没写清楚。",
            "{p}的说明书看不懂。",
            "不知道{p}怎么除垢。",
            "快速指南跳过了配对步骤。",
            "{p}哪个按钮是重置？说明书写得不清楚。",
            "{p}显示的错误代码说明书里查不到。",
        ], [
            "说明书上的图太小看不清。",
            "有没有视频教程？",
            "说明书只有一页中文。",
            "每一步都照做了还是不行。",
        ]),
    },
    "return_refund": {
        "en": ([
            "I returned the {p} two weeks ago and still have no refund.",
            "When will my refund be processed?",
            "I need a return label for the {p}.",
            "The refund amount is lower than what I paid.",
            "How do I return the {p}?",
        ], [
            "The courier already picked up the parcel.",
            "Please confirm you received the return.",
            "I have attached the tracking number.",
        ]),
        "zh": ([
            "{p}两周前就退回去了，钱还没退。",
            "退款什么时候到账？",
            "需要{p}的退货单。",
            "退款金额比我付的少。",
            "{p}怎么退货？",
        ], [
            "快递已经取件了。",
            "请确认是否收到退货。",
            "物流单号已经附上。",
        ]),
    },
    "payment": {
        "en": ([
            "I was charged twice for this order.",
            "My payment failed but the money left my account.",
            "The discount code was not applied at checkout.",
            "Can I change the payment method?",
        ], [
            "Please check the transaction.",
            "My bank shows a pending charge.",
        ]),
        "zh": ([
            "这个订单被扣了两次款。",
            "支付失败了但钱已经扣了。",
            "结账时优惠码没有生效。",
            "可以更换支付方式吗？",
        ], [
            "请核实一下交易记录。",
            "银行显示有一笔待处理扣款。",
        ]),
    },
    "account": {
        "en": ([
            "I cannot log in to my account.",
            "Please update my delivery address.",
            "I did not receive the verification code.",
            "How do I delete my account?",
        ], [
            "I tried resetting the password twice.",
            "My email address has changed.",
        ]),
        "zh": ([
            "账号登录不上。",
            "请帮我修改收货地址。",
            "收不到验证码。",
            "怎么注销账号？",
        ], [
            "已经重置过两次密码了。",
            "我的邮箱换了。",
        ]),
    },
    "other": {
        "en": ([
            "I have a question about my order.",
            "Can you send an invoice for the {p}?",
            "Is the {p} going to be restocked?",
            "Something is not right with my order.",
        ], [
            "Thanks in advance.",
            "Please get back to me.",
        ]),
        "zh": ([
            "我的订单有个问题想咨询。",
            "能开一下{p}的发票吗？",
            "{p}还会补货吗？",
            "我的订单好像有点问题。",
        ], [
            "先谢谢了。",
            "请尽快回复。",
        ]),
    },
    "mixed": {
        "en": ([
            "The {p} is okay, nothing special.",
            "Average quality, does the job.",
            "Some good points, some bad ones.",
            "The {p} is fine but delivery could be faster.",
            "Decent, though the colour is slightly off.",
        ], [
            "Might buy again if it is on sale.",
            "Not bad, not great.",
        ]),
        "zh": ([
            "{p}还可以，没什么特别的。",
            "质量一般，能用。",
            "有优点也有缺点。",
            "{p}还行，就是物流慢了点。",
            "还不错，颜色有点色差。",
        ], [
            "打折的话可能会回购。",
            "中规中矩吧。",
        ]),
    },
    "phone_fault": {
        "en": ([
            "Since the last software update the {p} keeps restarting.",
            "After the update the battery of the {p} drains in a few hours.",
            "The charging port of the {p} stopped working.",
            "The {p} overheats while charging since the update.",
            "The {p} will not charge anymore.",
            "The screen of the {p} freezes after the latest update.",
        ], [
            "A factory reset did not help.",
            "Several friends with the same phone have the same problem.",
            "Please roll back the update.",
            "The battery health dropped overnight.",
        ]),
        "zh": ([
            "上次系统更新后{p}一直重启。",
            "更新之后{p}几个小时就没电了。",
            "{p}的充电口坏了。",
            "更新以后{p}充电时发烫。",
            "{p}充不进电了。",
            "最新更新后{p}屏幕经常卡死。",
        ], [
            "恢复出厂设置也没用。",
            "身边几个用同款手机的朋友都有这个问题。",
            "希望能退回旧版本。",
            "电池健康度一夜之间掉了很多。",
        ]),
    },
}

# sentiment frames around the core: 0 negative, 1 neutral, 2 positive
FRAMES: dict[str, dict[str, list[list[str]]]] = {
    "en": {
        "vent": [["Absolutely furious!!!", "Worst purchase ever!!", "Never again!!!", "This is a joke.",
                  "I am so angry right now.", "Unbelievable!!"]],
        "open": [["Really disappointed.", "Not happy at all.", "What a letdown.", "I expected better.",
                  "Sadly this did not work out."],
                 ["It is okay.", "Mixed feelings.", "Hmm."],
                 ["Wow!", "Very happy.", "Great shop.", "Love it!", "So pleased."]],
        "close": [["Would not buy again.", "Do not recommend.", "Very disappointed.", "One star.",
                   "Please fix this."],
                  ["It is fine I guess.", "Three stars."],
                  ["Highly recommend!", "Will buy again.", "Thank you!", "Perfect."]],
        "greet": [["Hi,", "Hello,", "Hello team,", "Dear support,", "Hi there,"]],
        "request": [["Please help.", "Can you check this?", "Please advise.", "I need an answer today.",
                     "Thanks."]],
    },
    "zh": {
        "vent": [["气死我了！！", "史上最差的一次购物！", "再也不买了！！！", "简直是笑话。", "太生气了！",
                  "无语了！！"]],
        "open": [["非常失望。", "一点都不满意。", "太让人失望了。", "本来期待更好的。", "可惜不太理想。"],
                 ["还行吧。", "感受复杂。", "嗯。"],
                 ["太棒了！", "很满意。", "好店！", "爱了！", "非常开心。"]],
        "close": [["不会再买了。", "不推荐。", "非常失望。", "差评。", "希望商家改进。"],
                  ["凑合吧。", "三星。"],
                  ["强烈推荐！", "会回购的。", "谢谢商家！", "完美。"]],
        "greet": [["你好，", "您好，", "客服你好，", "在吗？"]],
        "request": [["麻烦处理一下。", "请帮忙看看。", "请尽快回复。", "今天需要答复。", "谢谢。"]],
    },
}


# --- small helpers ------------------------------------------------------------------------------


def _cat_draw(rng: np.random.Generator, cum: np.ndarray) -> np.ndarray:
    """One categorical draw per row of a (rows x k) cumulative-probability matrix."""
    u = rng.random(cum.shape[0])
    return (u[:, None] > cum[:, :-1]).sum(axis=1)


def _first_per_order(n_orders: int, order_of: np.ndarray, mask: np.ndarray, values: np.ndarray,
                     fill: int = -1) -> np.ndarray:
    """Value of the first masked row of each order (rows are grouped by order, line order)."""
    out = np.full(n_orders, fill, dtype=values.dtype)
    sel = np.flatnonzero(mask)
    if sel.size:
        uniq, first = np.unique(order_of[sel], return_index=True)
        out[uniq] = values[sel[first]]
    return out


def _any_per_order(n_orders: int, order_of: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.bincount(order_of[mask], minlength=n_orders) > 0


def _days(rng: np.random.Generator, low: float, high: float, n: int) -> np.ndarray:
    """Uniform durations in whole seconds between ``low`` and ``high`` days."""
    return (rng.uniform(low, high, n) * DAY).astype(np.int64)


def _gamma_days(rng: np.random.Generator, shape: float, scale: float, n: int) -> np.ndarray:
    return (rng.gamma(shape, scale, n) * DAY).astype(np.int64)


def _after(t: np.ndarray, delay: np.ndarray) -> np.ndarray:
    """``t + delay``, keeping missing timestamps missing."""
    return np.where(t == NULL_T, NULL_T, t + delay)


def _before(t: np.ndarray, end: int) -> np.ndarray:
    """Timestamps that have happened by the end of history (others become null)."""
    return np.where((t != NULL_T) & (t < end), t, NULL_T)


def _ids(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    """Zero-padded string ids built in Arrow (no Python string per row)."""
    digits = pc.utf8_lpad(pc.cast(pa.array(numbers, type=pa.int64()), pa.string()), width, "0")
    return pc.binary_join_element_wise(prefix, digits, "")


def _take(values: pa.Array, idx: np.ndarray) -> pa.Array:
    """``values[idx]`` with null wherever ``idx`` is negative."""
    return values.take(pa.array(idx.astype(np.int64), mask=idx < 0))


def _ts(seconds: np.ndarray, unit: str) -> pa.Array:
    """Naive-UTC timestamps from epoch seconds; ``NULL_T`` becomes null."""
    arr = pa.array(seconds, type=pa.int64(), mask=seconds == NULL_T).cast(pa.timestamp("s"))
    return arr if unit == "s" else arr.cast(pa.timestamp(unit))


def _money(x: np.ndarray) -> np.ndarray:
    return np.round(x, 2)


def _epoch(day: str) -> int:
    return int(np.datetime64(day, "s").astype(np.int64))


def _iso(seconds: int) -> str:
    return str(np.datetime64(int(seconds), "s")).replace("T", " ")


# --- calendar: seasonality as a time warp ----------------------------------------------------


@dataclass(frozen=True)
class Calendar:
    """Hourly shopping intensity, integrated, so that gaps drawn in "operational days" land on
    busy days more often (Nov/Dec peak, 11.11, Black Friday, weekends, evenings).

    Calendars: 0 English, 1 Chinese (evening peak at UTC+8), 2 and 3 the same for discount
    hunters, whose intensity is concentrated on promotion days.
    """

    start: int
    end: int
    grid: np.ndarray  # hour boundaries, epoch seconds (float64)
    cum: np.ndarray  # (4, hours + 1) cumulative intensity, scaled to days
    promo_day: np.ndarray  # per day since start: a promotion day
    peak_day: np.ndarray  # per day since start: November or December

    @property
    def days(self) -> float:
        return (self.end - self.start) / DAY

    def to_time(self, cal: np.ndarray, x: np.ndarray) -> np.ndarray:
        out = np.empty(x.shape[0], dtype=np.int64)
        for c in range(self.cum.shape[0]):
            m = cal == c
            if m.any():
                out[m] = np.interp(x[m], self.cum[c], self.grid).astype(np.int64)
        return np.clip(out, self.start, self.end - 1)

    def day_index(self, t: np.ndarray) -> np.ndarray:
        return np.clip((t - self.start) // DAY, 0, self.promo_day.size - 1)


def _promo_factor(days: np.ndarray) -> np.ndarray:
    """Sales-event multiplier per day (days since epoch): 11.11, 6.18, 12.12, Black Friday."""
    dates = days.astype("datetime64[D]")
    month = dates.astype("datetime64[M]").astype(np.int64) % 12 + 1
    dom = (dates - dates.astype("datetime64[M]")).astype(np.int64) + 1
    wday = (days + 3) % 7
    f = np.ones(days.size)
    f[(month == 11) & (dom <= 10)] = 1.35
    f[(month == 11) & (dom == 11)] = 3.2
    f[(month == 6) & (dom < 18)] = 1.15
    f[(month == 6) & (dom == 18)] = 2.2
    f[(month == 12) & (dom == 12)] = 1.8
    f[(month == 12) & ((dom == 24) | (dom == 25))] = 0.6
    black_friday = (month == 11) & (dom >= 23) & (dom <= 29) & (wday == 4)
    f[black_friday] = 2.3
    cyber_monday = np.roll(black_friday, 3)
    cyber_monday[:3] = False
    f[cyber_monday] = 1.7
    return f


def _calendar(start: int, end: int) -> Calendar:
    grid = np.arange(start, end + 1, HOUR, dtype=np.int64)
    mid = grid[:-1]
    day = mid // DAY
    month = mid.astype("datetime64[s]").astype("datetime64[M]").astype(np.int64) % 12
    wday = (day + 3) % 7
    hour = (mid // HOUR) % 24
    all_days = np.arange(start // DAY, (end - 1) // DAY + 1)
    promo_by_day = _promo_factor(all_days)
    promo = promo_by_day[day - all_days[0]]
    trend = 0.85 + 0.3 * (mid - start) / (end - start)  # a growing shop
    base = trend * MONTH_FACTOR[month] * WEEKDAY_FACTOR[wday]
    rows = []
    for hunter in (False, True):
        p = np.where(promo > 1.0, promo**2.2, 0.6) if hunter else promo
        for shift in (0, 8):  # local hour = UTC + shift
            lam = base * p * HOUR_FACTOR[(hour + shift) % 24]
            cum = np.concatenate([[0.0], np.cumsum(lam)])
            rows.append(cum * ((end - start) / DAY) / cum[-1])
    first_day = start // DAY
    n_days = int(np.ceil((end - start) / DAY))
    day_range = np.arange(first_day, first_day + n_days)
    day_month = day_range.astype("datetime64[D]").astype("datetime64[M]").astype(np.int64) % 12
    return Calendar(
        start=start,
        end=end,
        grid=grid.astype(np.float64),
        cum=np.vstack(rows),
        promo_day=_promo_factor(day_range) >= 1.6,
        peak_day=day_month >= 10,
    )


# --- products -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProductTable:
    category: np.ndarray
    brand: list[str]
    name: list[str]
    name_zh: list[str]
    size_sensitive: np.ndarray
    price: np.ndarray
    cost: np.ndarray
    launched: np.ndarray
    updated: np.ndarray
    popularity: np.ndarray  # sums to 1
    defect: np.ndarray
    not_as_described: np.ndarray
    launch_order: np.ndarray  # product indices sorted by launch
    launch_sorted: np.ndarray

    @property
    def n(self) -> int:
        return self.category.size


def _make_products(rng: np.random.Generator, start: int, end: int) -> ProductTable:
    """A catalogue of ~260-320 products; four of them carry a planted story."""
    n = int(rng.integers(260, 321))
    category = rng.choice(len(CATEGORIES), n, p=CATEGORY_SHARE)
    for planted in PLANTED_PRODUCTS:
        category[planted.index] = planted.category
    brand_pick = rng.random(n)
    type_pick = rng.random(n)
    model_pick = rng.integers(0, len(MODEL_WORDS), n)
    number = rng.integers(1, 10, n)
    brands, names, names_zh = [], [], []
    for i in range(n):  # a few hundred products: a Python loop is fine here
        c = int(category[i])
        b = BRANDS[c][int(brand_pick[i] * len(BRANDS[c]))]
        en, zh = PRODUCT_TYPES[c][int(type_pick[i] * len(PRODUCT_TYPES[c]))]
        model = MODEL_WORDS[int(model_pick[i])] + (f" {number[i]}" if number[i] > 6 else "")
        brands.append(b)
        names.append(f"{b} {model} {en}")
        names_zh.append(f"{b} {model}{zh}")
    price = np.round(PRICE_MEDIAN[category] * rng.lognormal(0.0, 0.45, n)) - 0.01
    price = np.maximum(price, 2.99)
    phones = (category == ELECTRONICS) & np.array(["Phone" in s for s in names])
    price[phones] = np.round(rng.uniform(399, 999, phones.sum())) - 0.01
    window = (end - start) / DAY
    first_launch = min(20.0, window / 3)
    new = rng.random(n) < 0.3
    launched = np.where(
        new,
        start + _days(rng, first_launch, max(first_launch, window - 14), n),
        start - _days(rng, 30, 3 * 365, n),
    )
    for planted in PLANTED_PRODUCTS:
        i = planted.index
        brands[i], names[i], names_zh[i] = planted.brand, planted.name, planted.name_zh
        price[i] = planted.price
        launched[i] = start + int(planted.launch_days_after_start * DAY)
    cost = _money(price * rng.uniform(0.3, 0.6, n))
    updated = launched + ((end - 1 - launched) * rng.random(n)).astype(np.int64)
    rank = rng.permutation(n)
    for planted in PLANTED_PRODUCTS:  # swap ranks so planted products sell enough to be seen
        other = int(np.flatnonzero(rank == planted.popularity_rank)[0])
        rank[other], rank[planted.index] = rank[planted.index], planted.popularity_rank
    popularity = (rank + 5.0) ** -0.95
    defect = np.clip(rng.lognormal(np.log(0.012), 0.6, n), 0.003, 0.08)
    nad = np.clip(rng.lognormal(np.log(0.01), 0.5, n), 0.002, 0.05)
    order = np.argsort(launched, kind="stable")
    return ProductTable(
        category=category.astype(np.int8),
        brand=brands,
        name=names,
        name_zh=names_zh,
        size_sensitive=np.isin(category, [APPAREL, SHOES]),
        price=_money(price),
        cost=cost,
        launched=launched.astype(np.int64),
        updated=updated.astype(np.int64),
        popularity=popularity / popularity.sum(),
        defect=defect,
        not_as_described=nad,
        launch_order=order,
        launch_sorted=launched[order].astype(np.int64),
    )


# --- customers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CustomerTable:
    archetype: np.ndarray
    region: np.ndarray
    lang: np.ndarray  # 0 en, 1 zh
    signup: np.ndarray
    updated: np.ndarray
    birth_year: np.ndarray  # NaN = unknown
    rate: np.ndarray  # personal buying-rate multiplier
    returner: np.ndarray  # personal propensity to return
    first_x: np.ndarray  # operational day of the first order (inf = never)
    stop_x: np.ndarray  # operational day after which a dormant customer stops
    calendar: np.ndarray

    @property
    def n(self) -> int:
        return self.archetype.size


def _make_customers(rng: np.random.Generator, n: int, cal: Calendar) -> CustomerTable:
    """Customers with archetypes; 35% signed up before the window, the rest during it."""
    arch = rng.choice(len(ARCHETYPES), n, p=ARCHETYPE_SHARE)
    region = rng.choice(len(REGIONS), n, p=REGION_WEIGHT / REGION_WEIGHT.sum())
    lang = (rng.random(n) < REGION_ZH_SHARE[region]).astype(np.int8)
    calendar = lang + 2 * (arch == HUNTER)
    existing = rng.random(n) < 0.35
    signup_x = rng.random(n) * cal.days
    signup = np.where(existing, cal.start - _days(rng, 1, 3 * 365, n), cal.to_time(calendar, signup_x))
    signup_x = np.where(existing, 0.0, signup_x)
    rate = np.clip(rng.gamma(3.0, 1 / 3, n), 0.3, 3.0)
    gap = MEAN_GAP_DAYS[arch] / rate
    in_signup_session = rng.random(n) < 0.5
    first_new = signup_x + np.where(in_signup_session, rng.uniform(0.002, 0.02, n),
                                    rng.exponential(np.minimum(gap, 20.0)))
    first_x = np.where(existing, rng.exponential(gap), first_new)
    one_time = arch == ONE_TIME
    first_x[one_time & existing] = rng.random((one_time & existing).sum()) * cal.days
    never = (arch == ABANDONER) & (rng.random(n) < 0.4)
    first_x[never] = np.inf
    stop_x = np.where(arch == DORMANT, signup_x + rng.uniform(60, 300, n), np.inf)
    birth = np.round(np.clip(rng.normal(1988, 11, n), 1945, 2007))
    birth[rng.random(n) < 0.08] = np.nan
    updated = signup + ((cal.end - 1 - signup) * rng.random(n)).astype(np.int64)
    returner = rng.gamma(4.0, 0.25, n) * np.where(arch == COMPLAINER, 1.3, 1.0)
    return CustomerTable(arch.astype(np.int8), region.astype(np.int8), lang, signup.astype(np.int64),
                         updated.astype(np.int64), birth, rate, returner, first_x, stop_x,
                         calendar.astype(np.int8))


@dataclass(frozen=True)
class World:
    """Everything fixed before the first order: calendar, catalogue, customers, planted dates."""

    cal: Calendar
    products: ProductTable
    customers: CustomerTable
    phone_spike: int  # Monday 00:00 of the week from which the phone fails
    manual_fixed: int  # the day the coffee machine's manual was rewritten
    agents_per_team: int

    @property
    def end(self) -> int:
        return self.cal.end


def _monday(t: int) -> int:
    day = t // DAY
    return int((day - (day + 3) % 7) * DAY)


def _make_world(rng: np.random.Generator, customers: int, months: int, end_date: str) -> World:
    end = _epoch(end_date) + DAY  # history includes the whole of end_date
    start = int((pd.Timestamp(end, unit="s") - pd.DateOffset(months=months)).value // 10**9)
    cal = _calendar(start, end)
    return World(
        cal=cal,
        products=_make_products(rng, start, end),
        customers=_make_customers(rng, customers, cal),
        phone_spike=_monday(end - PHONE_SPIKE_WEEKS_BEFORE_END * 7 * DAY),
        manual_fixed=(end // DAY - MANUAL_FIX_DAYS_BEFORE_END) * DAY,
        agents_per_team=max(6, round(customers / 5_000)),
    )


# --- one round of orders --------------------------------------------------------------------


def _pick_products(rng: np.random.Generator, w: World, t: np.ndarray, adopter: np.ndarray) -> np.ndarray:
    """Products available at ``t``; adopters grab launches of the last 14 days, others rarely do."""
    prods, n = w.products, t.size
    pick = rng.choice(prods.n, n, p=prods.popularity)
    pending = np.arange(n)
    for _ in range(8):  # redraw only the picks just rejected, so acceptance does not compound
        age = t[pending] - prods.launched[pick[pending]]
        bad = (age < 0) | ((age < 21 * DAY) & (rng.random(pending.size) > 0.25))
        pending = pending[bad]
        if pending.size == 0:
            break
        pick[pending] = rng.choice(prods.n, pending.size, p=prods.popularity)
    age = t - prods.launched[pick]
    pick[age < 0] = GARMENT.index  # always on sale
    lo = np.searchsorted(prods.launch_sorted, t - 14 * DAY)
    hi = np.searchsorted(prods.launch_sorted, t, side="right")
    fresh = adopter & (hi > lo) & (rng.random(n) < 0.65)
    pos = lo + (rng.random(n) * (hi - lo)).astype(np.int64)
    pick[fresh] = prods.launch_order[np.minimum(pos[fresh], prods.n - 1)]
    return pick


def _orders_round(rng: np.random.Generator, w: World, cust: np.ndarray, t: np.ndarray,
                  past_returns: np.ndarray) -> Arrays:
    """Order headers of one round: logistics, payment, discount and the pre-purchase behaviour."""
    c, n = w.customers, cust.size
    arch = c.archetype[cust]
    hunter = arch == HUNTER
    region = c.region[cust].astype(np.int64)
    moved = rng.random(n) < 0.04
    region[moved] = rng.integers(0, len(REGIONS), int(moved.sum()))
    day = w.cal.day_index(t)
    peak = w.cal.peak_day[day]
    promo = w.cal.promo_day[day]
    carrier = _cat_draw(rng, REGION_CARRIER_CUM[region])
    cancelled = rng.random(n) < np.where(hunter, 0.06, 0.025)
    promise = (REGION_PROMISE_DAYS[region] + peak) * DAY
    promised = t + promise
    ship_hours = np.clip(rng.lognormal(np.log(16), 0.6, n) * np.where(peak, 1.4, 1.0), 1, 70)
    shipped = t + (ship_hours * HOUR).astype(np.int64)
    late = rng.random(n) < CARRIER_LATE_P[carrier] + 0.05 * peak
    on_time = shipped + ((promised - shipped) * rng.uniform(0.35, 0.97, n)).astype(np.int64)
    delivered = np.where(late, promised + _days(rng, 0.3, 1.0, n) + _gamma_days(rng, 1.5, 1.3, n),
                         on_time)
    shipped = np.where(cancelled, NULL_T, shipped)
    delivered = np.where(cancelled, NULL_T, delivered)
    late &= ~cancelled
    pay_row = np.where(hunter, 2, c.lang[cust])
    deep = np.where(hunter, rng.random(n) < 0.75, False)
    rate = np.where(deep, rng.uniform(0.3, 0.6, n), 0.0)
    light = ~deep & (rng.random(n) < np.where(promo, 0.55, np.where(hunter, 0.3, 0.15)))
    rate = np.where(light, np.where(promo, rng.uniform(0.1, 0.3, n), rng.uniform(0.05, 0.15, n)), rate)
    policy_p = 0.05 + 0.10 * hunter + 0.06 * np.minimum(past_returns, 3) + 0.04 * (arch == COMPLAINER)
    return {
        "cust": cust,
        "t": t,
        "region": region.astype(np.int8),
        "carrier": carrier.astype(np.int8),
        "cancelled": cancelled,
        "promised": promised,
        "shipped": shipped,
        "delivered": delivered,
        "late": late,
        "payment": _cat_draw(rng, PAYMENT_CUM[pay_row]).astype(np.int8),
        "rate": rate,
        "deep": deep,
        "policy": rng.random(n) < policy_p,
        "n_items": np.minimum(1 + rng.poisson(0.5, n), 6),
    }


def _items_round(rng: np.random.Generator, w: World, o: Arrays) -> Arrays:
    """Order lines: product, quantity, price, discount, size and whether the size chart was read."""
    n_items = o["n_items"]
    order = np.repeat(np.arange(n_items.size), n_items)
    starts = np.cumsum(n_items) - n_items
    line = np.arange(order.size) - np.repeat(starts, n_items) + 1
    cust = o["cust"][order]
    arch = w.customers.archetype[cust]
    t = o["t"][order]
    prods = w.products
    product = _pick_products(rng, w, t, arch == ADOPTER)
    cat = prods.category[product]
    n = order.size
    qty = np.where(np.isin(cat, [FOOD, BEAUTY]), np.minimum(1 + rng.poisson(0.5, n), 5),
                   1 + (rng.random(n) < 0.05))
    price = prods.price[product]
    discount = _money(price * qty * o["rate"][order])
    size = np.full(n, -1, dtype=np.int8)
    apparel, shoes = cat == APPAREL, cat == SHOES
    size[apparel] = rng.choice(len(APPAREL_SIZES), int(apparel.sum()), p=APPAREL_SIZE_P)
    size[shoes] = len(APPAREL_SIZES) + rng.choice(len(SHOE_SIZES), int(shoes.sum()), p=SHOE_SIZE_P)
    chart = prods.size_sensitive[product] & (rng.random(n) < SIZE_CHART_P[arch])
    return {"order": order, "line": line, "product": product.astype(np.int16), "qty": qty,
            "price": price, "discount": discount, "size": size, "chart": chart}


def _return_hazards(w: World, o: Arrays, it: Arrays, past_returns: np.ndarray) -> np.ndarray:
    """Per line and reason: the chance of a return for that reason (the planted causes)."""
    prods = w.products
    p, oi = it["product"].astype(np.int64), it["order"]
    n = p.size
    h = np.zeros((n, len(RETURN_REASONS)))
    ss, chart = prods.size_sensitive[p], it["chart"]
    h[:, R_SIZE] = ss * np.where(chart, 0.035, 0.16)
    garment = p == GARMENT.index
    h[garment, R_SIZE] = np.where(chart[garment], 0.30, 0.50)
    h[:, R_QUALITY] = prods.defect[p]
    phone = p == PHONE.index
    h[phone, R_QUALITY] = np.where(o["t"][oi[phone]] >= w.phone_spike, 0.32, 0.025)
    h[:, R_NAD] = prods.not_as_described[p]
    h[:, R_DAMAGED] = 0.006 + 0.01 * (o["carrier"][oi] == LATE_CARRIER)
    h[p == FOOD_JAR.index, R_DAMAGED] = 0.22
    h[:, R_LATE] = 0.10 * o["late"][oi]
    policy = o["policy"][oi]
    cat = prods.category[p]
    h[:, R_MIND] = (0.02 + 0.07 * o["deep"][oi] + 0.06 * policy) * CHANGED_MIND_FACTOR[cat]
    h[:, R_OTHER] = 0.006
    mult = (1 + 0.35 * np.minimum(past_returns[oi], 4)) * np.where(policy, 1.5, 1.0)
    mult *= w.customers.returner[o["cust"][oi]]
    h *= mult[:, None]
    h[o["cancelled"][oi]] = 0.0
    return np.clip(h, 0.0, 0.9)


def _returns_round(rng: np.random.Generator, w: World, o: Arrays, it: Arrays,
                   past_returns: np.ndarray) -> Arrays:
    """Which lines come back, why, when, and how the refund went."""
    h = _return_hazards(w, o, it, past_returns)
    n = h.shape[0]
    p_any = 1.0 - np.prod(1.0 - h, axis=1)
    cum = np.cumsum(h, axis=1)
    reason = ((rng.random(n) * cum[:, -1])[:, None] > cum[:, :-1]).sum(axis=1)
    delay = np.select(
        [reason == R_LATE, reason == R_SIZE, reason == R_QUALITY, reason == R_DAMAGED],
        [_days(rng, 0.3, 3, n), DAY + _gamma_days(rng, 2, 1.5, n), 2 * DAY + _gamma_days(rng, 2, 4, n),
         _days(rng, 0.1, 2, n)],
        DAY + _gamma_days(rng, 2, 3, n),
    )
    requested = _after(o["delivered"][it["order"]], delay)
    returned = (rng.random(n) < p_any) & (requested != NULL_T) & (requested < w.end)
    rejected = rng.random(n) < np.where(np.isin(reason, [R_MIND, R_NAD]), 0.1, 0.04)
    decided = requested + _days(rng, 1, 4, n)
    refunded_at = requested + _days(rng, 2, 12, n)
    status = np.where(rejected, np.where(decided < w.end, 2, 0),
                      np.where(refunded_at < w.end, 3, np.where(decided < w.end, 1, 0)))
    return {"returned": returned, "reason": reason.astype(np.int8), "requested": requested,
            "status": status.astype(np.int8), "refunded": np.where(status == 3, refunded_at, NULL_T),
            "decided": np.where(status == 0, NULL_T, np.where(status == 3, refunded_at, decided))}


def _tickets_round(rng: np.random.Generator, w: World, o: Arrays, it: Arrays, rt: Arrays) -> Arrays:
    """Support tickets caused by the order's experience, handled by teams of unequal speed."""
    n, end = o["t"].size, w.end
    oi, p = it["order"], it["product"].astype(np.int64)
    prods = w.products
    arch = w.customers.archetype[o["cust"]]
    mult = np.where(arch == COMPLAINER, 3.0, np.where(arch == LOYAL, 0.8, 1.0))
    delivered = np.where(o["delivered"] < end, o["delivered"], NULL_T)
    has_delivery = delivered != NULL_T
    ret = rt["returned"]
    first_product = _first_per_order(n, oi, it["line"] == 1, p)
    qual = ret & (rt["reason"] == R_QUALITY)
    phone_after = (p == PHONE.index) & (o["t"][oi] >= w.phone_spike)
    manual = p == MANUAL.index
    manual_before_fix = manual & (o["t"][oi] < w.manual_fixed)
    gadget = np.isin(prods.category[p], [ELECTRONICS, HOME])
    size_ret = ret & (rt["reason"] == R_SIZE)
    first_return = _first_per_order(n, oi, ret, rt["requested"], NULL_T)

    def product_of(mask: np.ndarray) -> np.ndarray:
        return np.where(_any_per_order(n, oi, mask), _first_per_order(n, oi, mask, p), first_product)

    usage_p = np.where(_any_per_order(n, oi, manual_before_fix), 0.5,
                       np.where(_any_per_order(n, oi, manual), 0.06,
                                np.where(_any_per_order(n, oi, gadget), 0.02, 0.0)))
    defect_p = np.where(_any_per_order(n, oi, qual), 0.45,
                        np.where(_any_per_order(n, oi, phone_after), 0.10, 0.004))
    late_open = o["promised"] + _days(rng, 0.2, 2.5, n)
    where_is_it = _after(o["shipped"], _days(rng, 1, 3, n))
    after_delivery = np.where(has_delivery, delivered, NULL_T)
    specs = [  # category, probability, opened_at, product, tied to the order
        (TK_DELIVERY, np.where(o["late"], 0.38, 0.012), np.where(o["late"], late_open, where_is_it),
         first_product),
        (TK_DEFECT, defect_p, _after(after_delivery, _days(rng, 1, 15, n)), product_of(qual | phone_after)),
        (TK_SIZE, np.where(_any_per_order(n, oi, size_ret), 0.2, 0.01 * _any_per_order(
            n, oi, prods.size_sensitive[p])), _after(after_delivery, _days(rng, 0.5, 5, n)),
         product_of(size_ret)),
        (TK_REFUND, np.where(first_return != NULL_T, 0.22, 0.0), _after(first_return, _days(rng, 2, 12, n)),
         product_of(ret)),
        (TK_USAGE, usage_p, _after(after_delivery, _days(rng, 0.3, 7, n)), product_of(manual | gadget)),
        (TK_PAYMENT, np.full(n, 0.006), o["t"] + _days(rng, 0, 1, n), first_product),
        (TK_ACCOUNT, np.full(n, 0.004), o["t"] - _days(rng, 0, 30, n), first_product),
        (TK_SERVICE, np.where(arch == COMPLAINER, 0.05, 0.003), _after(after_delivery, _days(rng, 1, 20, n)),
         first_product),
        (TK_OTHER, np.full(n, 0.004), o["t"] + _days(rng, 0, 20, n), first_product),
    ]
    parts: list[tuple[np.ndarray, ...]] = []
    for category, prob, opened, product in specs:
        opened = np.where((opened == NULL_T) | (prob <= 0), NULL_T, opened)
        if category not in (TK_PAYMENT, TK_ACCOUNT):
            opened = np.where(o["cancelled"], NULL_T, opened)
        hit = (rng.random(n) < np.minimum(prob * mult, 0.95)) & (opened != NULL_T) & (opened < end)
        rows = np.flatnonzero(hit)
        parts.append((rows, np.full(rows.size, category, dtype=np.int8), opened[rows], product[rows]))
    order = np.concatenate([x[0] for x in parts])
    category = np.concatenate([x[1] for x in parts])
    opened = np.concatenate([x[2] for x in parts])
    product = np.concatenate([x[3] for x in parts])
    return _handle_tickets(rng, w, order, category, opened, product, arch[order])


def _handle_tickets(rng: np.random.Generator, w: World, order: np.ndarray, category: np.ndarray,
                    opened: np.ndarray, product: np.ndarray, arch: np.ndarray) -> Arrays:
    """Channel, team, agent, response, resolution, escalation and satisfaction of each ticket."""
    n, end = order.size, w.end
    channel = rng.choice(len(TICKET_CHANNELS), n, p=CHANNEL_P)
    team = rng.choice(len(TEAMS), n, p=TEAM_P)
    slow = team == SLOW_TEAM
    agent = team * w.agents_per_team + rng.integers(0, w.agents_per_team, n)
    median_hours = np.where(slow, 30.0, 2.5)
    response_h = rng.lognormal(np.log(median_hours), np.where(slow, 0.6, 0.9)) * CHANNEL_RESPONSE_FACTOR[
        channel]
    response_h = np.maximum(response_h, 0.02)
    first_response = opened + (response_h * HOUR).astype(np.int64)
    serious = np.isin(category, [TK_DEFECT, TK_SERVICE, TK_DELIVERY])
    complainer = arch == COMPLAINER
    escalated = rng.random(n) < 0.05 + 0.14 * slow + 0.08 * serious + 0.1 * complainer
    reopened = rng.random(n) < 0.04 + 0.08 * slow + 0.06 * escalated
    never_resolved = rng.random(n) < 0.04 + 0.12 * slow + 0.1 * escalated
    resolve_h = rng.lognormal(np.log(20.0), 0.8, n) * np.where(escalated, 3, 1) * np.where(slow, 2, 1)
    resolve_h *= np.where(reopened, 2.5, 1.0)
    resolved = first_response + (resolve_h * HOUR).astype(np.int64)
    resolved = np.where(never_resolved, NULL_T, _before(resolved, end))
    first_response = _before(first_response, end)
    latent = (4.7 - 0.9 * slow - 1.0 * escalated - 0.5 * reopened - 0.25 * np.log1p(response_h)
              + rng.normal(0, 0.6, n))
    latent = np.where(resolved == NULL_T, latent - 1.5, latent)
    answered = rng.random(n) < np.where(resolved == NULL_T, 0.2, 0.55)
    satisfaction = np.where(answered, np.clip(np.round(latent), 1, 5), np.nan)
    updated = np.maximum(opened, np.maximum(first_response, resolved))
    return {"order": order, "category": category, "opened": opened, "first_response": first_response,
            "resolved": resolved, "team": team.astype(np.int8), "agent": agent, "channel":
            channel.astype(np.int8), "escalated": escalated, "reopened": reopened, "satisfaction":
            satisfaction, "product": product.astype(np.int16), "updated": updated,
            "bad": escalated | never_resolved, "slow": slow}


def _reviews_round(rng: np.random.Generator, w: World, o: Arrays, it: Arrays, rt: Arrays,
                   tk: Arrays) -> Arrays:
    """Reviews: most orders get none; bad experiences get more and worse ones, some before delivery."""
    n, end = o["t"].size, w.end
    oi, p = it["order"], it["product"].astype(np.int64)
    arch = w.customers.archetype[o["cust"]]
    complainer, loyal = arch == COMPLAINER, arch == LOYAL
    first_product = _first_per_order(n, oi, it["line"] == 1, p)
    ret = rt["returned"]
    ret_reason = _first_per_order(n, oi, ret, rt["reason"].astype(np.int64))
    ret_product = _first_per_order(n, oi, ret, p)
    topic = np.where(ret_reason >= 0, REASON_TOPIC[np.maximum(ret_reason, 0)], -1)
    phone_fault = (ret_product == PHONE.index) & (ret_reason == R_QUALITY) & (o["t"] >= w.phone_spike)
    topic[phone_fault] = T["phone_fault"]
    product = np.where(ret_reason >= 0, ret_product, first_product)
    slow_ticket = _any_per_order(n, tk["order"], tk["slow"])
    bad_ticket = _any_per_order(n, tk["order"], tk["bad"])
    jar = _any_per_order(n, oi, p == FOOD_JAR.index) & (rng.random(n) < 0.25)
    for cond, name in [(o["late"], "logistics_late"), (slow_ticket, "service_attitude"),
                       (bad_ticket, "service_attitude"), (jar, "damaged_packaging")]:
        topic = np.where((topic < 0) & cond, T[name], topic)
    product = np.where(jar & (topic == T["damaged_packaging"]) & (ret_reason < 0), FOOD_JAR.index, product)
    cause = topic >= 0
    early = o["late"] & (rng.random(n) < 0.35)  # angry review while the parcel is still missing
    gap = o["delivered"] - o["promised"]
    created = np.where(early, o["promised"] + (gap * rng.uniform(0.1, 0.9, n)).astype(np.int64),
                       o["delivered"] + _days(rng, 0.1, 1, n) + _gamma_days(rng, 1.5, 3, n))
    created = np.where(o["cancelled"], NULL_T, created)
    topic = np.where(early, T["logistics_late"], topic)
    p_review = 0.18 + 0.22 * cause + 0.25 * complainer + 0.07 * loyal + 0.4 * early + 0.15 * slow_ticket
    wrote = (rng.random(n) < np.minimum(p_review, 0.95)) & (created != NULL_T) & (created < end)
    p_bad = np.where(cause, BAD_REVIEW_P[np.maximum(topic, 0)], 0.02) + 0.15 * complainer
    p_bad = np.where(early, 0.85, p_bad) + 0.3 * slow_ticket  # the slow team's customers vent
    bad = rng.random(n) < p_bad
    topic = np.where(slow_ticket & bad & (rng.random(n) < 0.5), T["service_attitude"], topic)
    u = rng.random(n)
    score = np.where(bad, np.where(u < 0.55, 1, 2),
                     np.where(cause, np.select([u < 0.5, u < 0.85], [3, 4], 5),
                              np.select([u < 0.6, u < 0.9], [5, 4], 3)))
    random_topic = np.array([T["quality_defect"], T["not_as_described"], T["price_value"],
                             T["service_attitude"]])[rng.integers(0, 4, n)]
    text_topic = np.where(score <= 2, np.where(cause, topic, random_topic),
                          np.where(score == 3, np.where(u < 0.6, T["mixed"], T["price_value"]),
                                   T["praise"]))
    rows = np.flatnonzero(wrote)
    return {"order": rows, "score": score[rows].astype(np.int8), "created": created[rows],
            "topic": text_topic[rows].astype(np.int8), "product": product[rows].astype(np.int16),
            "has_text": rng.random(rows.size) < 0.85}


def _quits(rng: np.random.Generator, w: World, o: Arrays, rt: Arrays, it: Arrays, tk: Arrays,
           rv: Arrays) -> np.ndarray:
    """Whether each customer stops buying after this order: unresolved or escalated tickets and
    bad reviews raise it sharply; loyal customers shrug most of it off."""
    n = o["t"].size
    arch = w.customers.archetype[o["cust"]]
    bad_ticket = _any_per_order(n, tk["order"], tk["bad"])
    bad_review = _any_per_order(n, rv["order"], rv["score"] <= 2)
    returned = _any_per_order(n, it["order"], rt["returned"])
    effect = 0.5 * bad_ticket + 0.38 * bad_review + 0.05 * o["late"] + 0.04 * returned
    q = BASE_QUIT[arch] + np.where(arch == LOYAL, 0.4, 1.0) * effect
    return rng.random(n) < np.minimum(q, 0.98)


# --- the whole simulation -------------------------------------------------------------------


@dataclass
class Shop:
    """All clean rows as arrays, orders sorted by time; indices instead of string ids."""

    orders: Arrays
    items: Arrays
    returns: Arrays
    tickets: Arrays
    reviews: Arrays
    events: Arrays


def _concat(parts: list[Arrays]) -> Arrays:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _simulate(rng: np.random.Generator, w: World, step: _Steps) -> tuple[Arrays, Arrays, Arrays, Arrays]:
    """Rounds of orders until every customer has stopped or reached the end of history."""
    c = w.customers
    x = c.first_x.copy()
    active = x < np.minimum(w.cal.days, c.stop_x)
    past_returns = np.zeros(c.n, dtype=np.int64)
    orders, items, tickets, reviews = [], [], [], []
    offset = 0
    rounds = 0
    while active.any() and rounds < 500:
        rounds += 1
        cust = np.flatnonzero(active)
        t = w.cal.to_time(c.calendar[cust], x[cust])
        o = _orders_round(rng, w, cust, t, past_returns[cust])
        it = _items_round(rng, w, o)
        rt = _returns_round(rng, w, o, it, past_returns[cust])
        tk = _tickets_round(rng, w, o, it, rt)
        rv = _reviews_round(rng, w, o, it, rt, tk)
        quit_now = _quits(rng, w, o, rt, it, tk, rv)
        past_returns[cust] += np.bincount(it["order"][rt["returned"]], minlength=cust.size)
        gap = np.maximum(rng.exponential(MEAN_GAP_DAYS[c.archetype[cust]] / c.rate[cust]), 0.2)
        x[cust] += gap
        active[cust] = ~quit_now & (x[cust] < w.cal.days) & (x[cust] < c.stop_x[cust])
        it["order"] = it["order"] + offset
        tk["order"] = tk["order"] + offset
        rv["order"] = rv["order"] + offset
        orders.append(o)
        items.append(it | rt)
        tickets.append(tk)
        reviews.append(rv)
        offset += cust.size
        step.note(f"orders: round {rounds}, {offset:,} orders")
    o, tk, rv = _concat(orders), _concat(tickets), _concat(reviews)
    tk["cust"] = o["cust"][tk["order"]]
    return o, _concat(items), tk, rv


def _finalise(w: World, o: Arrays, it: Arrays, tk: Arrays, rv: Arrays) -> Shop:
    """Sort orders by time (ids follow time), attach amounts, split returns off the lines."""
    rank_order = np.lexsort((o["cust"], o["t"]))
    rank = np.empty_like(rank_order)
    rank[rank_order] = np.arange(rank_order.size)
    o = {k: v[rank_order] for k, v in o.items()}
    it["order"] = rank[it["order"]]
    line_sort = np.lexsort((it["line"], it["order"]))
    it = {k: v[line_sort] for k, v in it.items()}
    n = rank_order.size
    gross = np.bincount(it["order"], weights=it["price"] * it["qty"], minlength=n)
    discount = _money(np.bincount(it["order"], weights=it["discount"], minlength=n))
    net = _money(gross - discount)
    o["discount"] = discount
    o["shipping_fee"] = np.where(net >= 59, 0.0, 5.99)
    o["total"] = _money(net + o["shipping_fee"])
    end = w.end
    o["shipped"] = _before(o["shipped"], end)
    o["promised"] = _before(o["promised"], end + PROMISE_VISIBLE_AFTER_END)
    o["delivered"] = _before(o["delivered"], end)
    o["status"] = np.select(
        [o["cancelled"], o["delivered"] != NULL_T, o["shipped"] != NULL_T],
        [ORDER_CANCELLED, ORDER_DELIVERED, ORDER_SHIPPED], ORDER_PLACED).astype(np.int8)
    cancel_time = o["t"] + HOUR * (1 + o["t"] % 30)  # cancelled within a day or so
    o["updated"] = np.where(o["cancelled"], np.minimum(cancel_time, end - 1),
                            np.maximum(o["t"], np.maximum(o["shipped"], o["delivered"])))
    r = np.flatnonzero(it["returned"])
    r = r[np.argsort(it["requested"][r], kind="stable")]
    returns = {
        "order": it["order"][r],
        "line": r,
        "product": it["product"][r],
        "requested": it["requested"][r],
        "reason": it["reason"][r],
        "refund": _money(it["price"][r] * it["qty"][r] - it["discount"][r]),
        "status": it["status"][r],
        "refunded": it["refunded"][r],
        "updated": np.maximum(it["requested"][r], it["decided"][r]),
    }
    tk["order"] = np.where(tk["category"] == TK_ACCOUNT, -1, rank[tk["order"]])
    ts = np.argsort(tk["opened"], kind="stable")
    tk = {k: v[ts] for k, v in tk.items()}
    rv["order"] = rank[rv["order"]]
    rs = np.argsort(rv["created"], kind="stable")
    rv = {k: v[rs] for k, v in rv.items()}
    return Shop(orders=o, items=it, returns=returns, tickets=tk, reviews=rv, events={})


# --- events ----------------------------------------------------------------------------------


class _EventBlocks:
    """Collects blocks of events (same shape arrays) before one sort by time."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, ...]] = []

    def add(self, session: np.ndarray, cust: np.ndarray, etype: int | np.ndarray, product: np.ndarray,
            t: np.ndarray) -> None:
        n = t.size
        etypes = np.broadcast_to(np.asarray(etype, dtype=np.int8), (n,))
        self.parts.append((session.astype(np.int64), cust.astype(np.int32), etypes.astype(np.int8),
                           np.broadcast_to(product, (n,)).astype(np.int16), t.astype(np.int64)))

    def build(self, end: int) -> Arrays:
        cols = [np.concatenate([p[i] for p in self.parts]) for i in range(5)]
        keep = cols[4] < end
        cols = [c[keep] for c in cols]
        order = np.argsort(cols[4], kind="stable")
        return dict(zip(["session", "cust", "type", "product", "t"], [c[order] for c in cols],
                        strict=True))


def _events(rng: np.random.Generator, w: World, shop: Shop) -> Arrays:
    """Behaviour around each order (browse, size chart, return policy, checkout), after it
    (return-policy views, support contacts), and sessions that end without an order."""
    o, it, prods = shop.orders, shop.items, w.products
    n_orders = o["t"].size
    blocks = _EventBlocks()
    none = np.int16(-1)
    cust_o = o["cust"]
    dur = np.clip(rng.lognormal(np.log(12 * MINUTE), 0.7, n_orders), 2 * MINUTE, 90 * MINUTE)
    start = o["t"] - dur.astype(np.int64)

    def at(rows: np.ndarray, lo: float, hi: float) -> np.ndarray:
        return start[rows] + (dur[rows] * rng.uniform(lo, hi, rows.size)).astype(np.int64)

    session_o = np.arange(n_orders)
    rows = np.flatnonzero(rng.random(n_orders) < 0.45)
    blocks.add(session_o[rows], cust_o[rows], EV_SEARCH, none, at(rows, 0.0, 0.1))
    rows = np.repeat(session_o, rng.poisson(0.25, n_orders))
    browse = rng.choice(prods.n, rows.size, p=prods.popularity)
    blocks.add(rows, cust_o[rows], EV_VIEW, browse, at(rows, 0.05, 0.6))
    io = it["order"]
    views = np.repeat(np.arange(io.size), 1 + rng.poisson(0.15, io.size))
    blocks.add(io[views], cust_o[io[views]], EV_VIEW, it["product"][views], at(io[views], 0.1, 0.55))
    chart = np.flatnonzero(it["chart"])
    earlier = rng.random(chart.size) < 0.3  # read the size chart in a research session days before
    now, before = chart[~earlier], chart[earlier]
    blocks.add(io[now], cust_o[io[now]], EV_SIZE_CHART, it["product"][now], at(io[now], 0.35, 0.7))
    next_session = n_orders
    research = next_session + np.arange(before.size)
    next_session += before.size
    t_research = o["t"][io[before]] - _days(rng, 1, 6, before.size)
    blocks.add(research, cust_o[io[before]], EV_VIEW, it["product"][before], t_research)
    blocks.add(research, cust_o[io[before]], EV_SIZE_CHART, it["product"][before],
               t_research + rng.integers(20, 300, before.size))
    blocks.add(io, cust_o[io], EV_ADD, it["product"], at(io, 0.6, 0.85))
    rows = np.flatnonzero(rng.random(n_orders) < 0.12)
    extra = rng.choice(prods.n, rows.size, p=prods.popularity).astype(np.int16)
    blocks.add(rows, cust_o[rows], EV_ADD, extra, at(rows, 0.5, 0.7))
    blocks.add(rows, cust_o[rows], EV_REMOVE, extra, at(rows, 0.75, 0.9))
    rows = np.flatnonzero(o["policy"])
    blocks.add(rows, cust_o[rows], EV_POLICY, none, at(rows, 0.8, 0.95))
    blocks.add(session_o, cust_o, EV_CHECKOUT, none, o["t"] - rng.integers(1, 6, n_orders))

    # after the purchase
    r = shop.returns
    rows = np.flatnonzero(rng.random(r["order"].size) < 0.7)
    deliv = o["delivered"][r["order"][rows]]
    t_view = deliv + ((r["requested"][rows] - deliv) * rng.uniform(0.05, 0.95, rows.size)).astype(np.int64)
    sessions = next_session + np.arange(rows.size)
    next_session += rows.size
    blocks.add(sessions, cust_o[r["order"][rows]], EV_POLICY, r["product"][rows], t_view)
    kept = np.flatnonzero((o["delivered"] != NULL_T) & (rng.random(n_orders) < 0.03))
    sessions = next_session + np.arange(kept.size)
    next_session += kept.size
    blocks.add(sessions, cust_o[kept], EV_POLICY, none, o["delivered"][kept] + _days(rng, 0, 10, kept.size))
    tk = shop.tickets
    online = np.isin(tk["channel"], [TICKET_CHANNELS.index("chat"), TICKET_CHANNELS.index("phone")])
    rows = np.flatnonzero(rng.random(tk["opened"].size) < np.where(online, 0.7, 0.4))
    sessions = next_session + np.arange(rows.size)
    next_session += rows.size
    blocks.add(sessions, tk["cust"][rows], EV_SUPPORT, tk["product"][rows],
               tk["opened"][rows] - rng.integers(MINUTE, 10 * MINUTE, rows.size))

    # sessions that end without an order (cart abandoners have many)
    c = w.customers
    since = np.maximum(c.signup, w.cal.start)
    years = np.maximum(w.end - since, 0) / (365 * DAY)
    count = rng.poisson(ABANDONED_PER_YEAR[c.archetype] * years)
    owner = np.repeat(np.arange(c.n), count)
    s_start = since[owner] + ((w.end - since[owner]) * rng.random(owner.size)).astype(np.int64)
    owner = np.where(rng.random(owner.size) < 0.04, -1, owner)  # browsing while logged out
    n_s = owner.size
    sessions = next_session + np.arange(n_s)
    s_dur = np.clip(rng.lognormal(np.log(8 * MINUTE), 0.8, n_s), MINUTE, 60 * MINUTE)

    def s_at(rows: np.ndarray, lo: float, hi: float) -> np.ndarray:
        return s_start[rows] + (s_dur[rows] * rng.uniform(lo, hi, rows.size)).astype(np.int64)

    rows = np.flatnonzero(rng.random(n_s) < 0.5)
    blocks.add(sessions[rows], owner[rows], EV_SEARCH, none, s_at(rows, 0.0, 0.1))
    rows = np.repeat(np.arange(n_s), 1 + rng.poisson(0.8, n_s))
    blocks.add(sessions[rows], owner[rows], EV_VIEW, rng.choice(prods.n, rows.size, p=prods.popularity),
               s_at(rows, 0.1, 0.6))
    cart = rng.choice(prods.n, n_s, p=prods.popularity).astype(np.int16)
    rows = np.flatnonzero(rng.random(n_s) < 0.8)
    blocks.add(sessions[rows], owner[rows], EV_ADD, cart[rows], s_at(rows, 0.6, 0.8))
    removed = rows[rng.random(rows.size) < 0.3]
    blocks.add(sessions[removed], owner[removed], EV_REMOVE, cart[removed], s_at(removed, 0.85, 1.0))
    rows = np.flatnonzero(rng.random(n_s) < 0.05)
    blocks.add(sessions[rows], owner[rows], EV_POLICY, none, s_at(rows, 0.7, 0.9))
    return blocks.build(w.end)


# --- texts ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Bank:
    """Sentences of one slot, grouped by key (topic or sentiment), flattened for vector picks."""

    pre: pa.Array
    post: pa.Array
    has_name: np.ndarray
    offset: np.ndarray
    count: np.ndarray

    @classmethod
    def build(cls, groups: list[list[str]]) -> _Bank:
        flat = [s for g in groups for s in g]
        split = [s.split("{p}", 1) if "{p}" in s else [s, ""] for s in flat]
        counts = np.array([len(g) for g in groups])
        return cls(pa.array([s[0] for s in split]), pa.array([s[1] for s in split]),
                   np.array(["{p}" in s for s in flat]), np.cumsum(counts) - counts, counts)

    def pick(self, rng: np.random.Generator, key: np.ndarray, names: pa.Array) -> pa.Array:
        j = self.offset[key] + (rng.random(key.size) * self.count[key]).astype(np.int64)
        name = pc.if_else(pa.array(self.has_name[j]), names, "")
        return pc.binary_join_element_wise(self.pre.take(j), name, self.post.take(j), "")


def _banks(lang: str) -> dict[str, _Bank]:
    banks = {
        "core": _Bank.build([PHRASES[t][lang][0] for t in TOPICS]),
        "detail": _Bank.build([PHRASES[t][lang][1] for t in TOPICS]),
    }
    banks |= {slot: _Bank.build(groups) for slot, groups in FRAMES[lang].items()}
    return banks


BANKS = {lang: _banks(lang) for lang in LANGS}
TEXT_SLOTS: dict[str, list[tuple[str, float]]] = {  # slot, chance it is used
    "review": [("vent", 0.35), ("open", 0.45), ("core", 1.0), ("detail", 0.55), ("close", 0.5)],
    "ticket": [("greet", 0.7), ("core", 1.0), ("detail", 0.5), ("request", 0.6)],
    "return": [("core", 1.0), ("detail", 0.35)],
}


def _compose(rng: np.random.Generator, kind: str, topic: np.ndarray, lang: np.ndarray,
             product: np.ndarray, sentiment: np.ndarray, names: dict[str, pa.Array]) -> pa.Array:
    """Texts built from the phrase banks in each row's language (several templates, fillers,
    product names), so that a text classifier has real variation to learn from."""
    topic = topic.astype(np.int64)
    sentiment = sentiment.astype(np.int64)
    pieces_by_lang, rows_by_lang = [], []
    for code, lang_name in enumerate(LANGS):
        rows = np.flatnonzero(lang == code)
        rows_by_lang.append(rows)
        if rows.size == 0:
            pieces_by_lang.append(pa.array([], type=pa.string()))
            continue
        bank = BANKS[lang_name]
        prod_names = names[lang_name].take(pa.array(product[rows].astype(np.int64)))
        pieces = []
        for slot, chance in TEXT_SLOTS[kind]:
            key = {"core": topic[rows], "detail": topic[rows], "open": sentiment[rows],
                   "close": sentiment[rows]}.get(slot, np.zeros(rows.size, dtype=np.int64))
            piece = bank[slot].pick(rng, key, prod_names)
            use = rng.random(rows.size) < chance
            if slot == "vent":
                use &= sentiment[rows] == 0
            pieces.append(pc.if_else(pa.array(use), piece, ""))
        text = pc.binary_join_element_wise(*pieces, " " if lang_name == "en" else "")
        if lang_name == "en":
            text = pc.utf8_trim_whitespace(pc.replace_substring_regex(text, r"\s+", " "))
        pieces_by_lang.append(text)
    order = np.concatenate(rows_by_lang)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    return pa.concat_arrays(pieces_by_lang).take(pa.array(inverse))


# --- tables -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ids:
    """String ids of the shop, built once in Arrow."""

    customers: pa.Array
    products: pa.Array
    orders: pa.Array


def _table(spec_name: str, columns: dict[str, pa.Array]) -> pa.Table:
    """A table in the schema's column order; fails loudly if a column is missing or extra."""
    expected = TABLES[spec_name].columns
    if sorted(columns) != sorted(expected):
        raise ValueError(f"{spec_name}: columns {sorted(columns)} differ from the schema {sorted(expected)}")
    return pa.table({name: columns[name] for name in expected})


def _customers_table(w: World, ids: _Ids, unit: str) -> pa.Table:
    c = w.customers
    return _table("customers", {
        Customers.customer_id: ids.customers,
        Customers.signup_at: _ts(c.signup, unit),
        Customers.region: pa.array(REGIONS).take(pa.array(c.region.astype(np.int64))),
        Customers.language: pa.array(LANGS).take(pa.array(c.lang.astype(np.int64))),
        Customers.birth_year: pa.array(c.birth_year, mask=np.isnan(c.birth_year)),
        Customers.updated_at: _ts(c.updated, unit),
    })


def _products_table(w: World, ids: _Ids, unit: str) -> pa.Table:
    p = w.products
    return _table("products", {
        Products.product_id: ids.products,
        Products.name: pa.array(p.name),
        Products.category: pa.array(CATEGORIES).take(pa.array(p.category.astype(np.int64))),
        Products.brand: pa.array(p.brand),
        Products.size_sensitive: pa.array(p.size_sensitive),
        Products.list_price: pa.array(p.price),
        Products.unit_cost: pa.array(p.cost),
        Products.launched_at: _ts(p.launched, unit),
        Products.updated_at: _ts(p.updated, unit),
    })


def _orders_table(shop: Shop, ids: _Ids, unit: str) -> pa.Table:
    o = shop.orders
    return _table("orders", {
        Orders.order_id: ids.orders,
        Orders.customer_id: _take(ids.customers, o["cust"]),
        Orders.ordered_at: _ts(o["t"], unit),
        Orders.promised_at: _ts(o["promised"], unit),
        Orders.shipped_at: _ts(o["shipped"], unit),
        Orders.delivered_at: _ts(o["delivered"], unit),
        Orders.status: pa.array(ORDER_STATUSES).take(pa.array(o["status"].astype(np.int64))),
        Orders.total_amount: pa.array(o["total"]),
        Orders.discount_amount: pa.array(o["discount"]),
        Orders.shipping_fee: pa.array(o["shipping_fee"]),
        Orders.payment_type: pa.array(PAYMENT_TYPES).take(pa.array(o["payment"].astype(np.int64))),
        Orders.region: pa.array(REGIONS).take(pa.array(o["region"].astype(np.int64))),
        Orders.carrier: _take(pa.array(CARRIERS), np.where(o["cancelled"], -1, o["carrier"])),
        Orders.updated_at: _ts(o["updated"], unit),
    })


def _items_table(shop: Shop, ids: _Ids) -> pa.Table:
    it = shop.items
    return _table("order_items", {
        OrderItems.order_id: _take(ids.orders, it["order"]),
        OrderItems.line_no: pa.array(it["line"].astype(np.int64)),
        OrderItems.product_id: _take(ids.products, it["product"]),
        OrderItems.quantity: pa.array(it["qty"].astype(np.int64)),
        OrderItems.unit_price: pa.array(it["price"]),
        OrderItems.discount_amount: pa.array(it["discount"]),
        OrderItems.size: _take(pa.array(SIZES), it["size"]),
    })


def _returns_table(rng: np.random.Generator, w: World, shop: Shop, ids: _Ids, names: dict[str, pa.Array],
                   unit: str) -> pa.Table:
    r, o = shop.returns, shop.orders
    n = r["order"].size
    lang = w.customers.lang[o["cust"][r["order"]]]
    topic = REASON_TOPIC[r["reason"]]
    phone = (r["product"] == PHONE.index) & (r["reason"] == R_QUALITY) & (o["t"][r["order"]] >= w.phone_spike)
    topic = np.where(phone, T["phone_fault"], topic)
    text = _compose(rng, "return", topic, lang, r["product"], np.zeros(n), names)
    text = pc.if_else(pa.array(rng.random(n) < 0.8), text, pa.scalar(None, pa.string()))
    rejected = r["status"] == RETURN_STATUSES.index("rejected")
    return _table("returns", {
        Returns.return_id: _ids("R", np.arange(1, n + 1), 8),
        Returns.order_id: _take(ids.orders, r["order"]),
        Returns.product_id: _take(ids.products, r["product"]),
        Returns.requested_at: _ts(r["requested"], unit),
        Returns.reason_code: pa.array(RETURN_REASONS).take(pa.array(r["reason"].astype(np.int64))),
        Returns.reason_text: text,
        Returns.refund_amount: pa.array(r["refund"], mask=rejected),
        Returns.status: pa.array(RETURN_STATUSES).take(pa.array(r["status"].astype(np.int64))),
        Returns.refunded_at: _ts(r["refunded"], unit),
        Returns.updated_at: _ts(r["updated"], unit),
    })


def _tickets_table(rng: np.random.Generator, w: World, shop: Shop, ids: _Ids, names: dict[str, pa.Array],
                   unit: str) -> pa.Table:
    tk = shop.tickets
    n = tk["opened"].size
    lang = w.customers.lang[tk["cust"]]
    topic = TICKET_TOPIC[tk["category"]]
    phone = (tk["product"] == PHONE.index) & (tk["category"] == TK_DEFECT) & (tk["opened"] >= w.phone_spike)
    topic = np.where(phone, T["phone_fault"], topic)
    text = _compose(rng, "ticket", topic, lang, tk["product"], np.zeros(n), names)
    agents = _ids("AG", np.arange(1, len(TEAMS) * w.agents_per_team + 1), 4)
    return _table("tickets", {
        Tickets.ticket_id: _ids("T", np.arange(1, n + 1), 8),
        Tickets.customer_id: _take(ids.customers, tk["cust"]),
        Tickets.order_id: _take(ids.orders, tk["order"]),
        Tickets.channel: pa.array(TICKET_CHANNELS).take(pa.array(tk["channel"].astype(np.int64))),
        Tickets.category: pa.array(TICKET_CATEGORIES).take(pa.array(tk["category"].astype(np.int64))),
        Tickets.opened_at: _ts(tk["opened"], unit),
        Tickets.first_response_at: _ts(tk["first_response"], unit),
        Tickets.resolved_at: _ts(tk["resolved"], unit),
        Tickets.agent_id: agents.take(pa.array(tk["agent"].astype(np.int64))),
        Tickets.team: pa.array(TEAMS).take(pa.array(tk["team"].astype(np.int64))),
        Tickets.escalated: pa.array(tk["escalated"]),
        Tickets.reopened: pa.array(tk["reopened"]),
        Tickets.satisfaction: pa.array(tk["satisfaction"], mask=np.isnan(tk["satisfaction"])),
        Tickets.text: text,
        Tickets.language: pa.array(LANGS).take(pa.array(lang.astype(np.int64))),
        Tickets.updated_at: _ts(tk["updated"], unit),
    })


def _reviews_table(rng: np.random.Generator, w: World, shop: Shop, ids: _Ids, names: dict[str, pa.Array],
                   unit: str) -> pa.Table:
    rv, o = shop.reviews, shop.orders
    n = rv["order"].size
    cust = o["cust"][rv["order"]]
    lang = w.customers.lang[cust]
    sentiment = np.select([rv["score"] <= 2, rv["score"] == 3], [0, 1], 2)
    text = _compose(rng, "review", rv["topic"], lang, rv["product"], sentiment, names)
    text = pc.if_else(pa.array(rv["has_text"]), text, pa.scalar(None, pa.string()))
    return _table("reviews", {
        Reviews.review_id: _ids("V", np.arange(1, n + 1), 8),
        Reviews.order_id: _take(ids.orders, rv["order"]),
        Reviews.customer_id: _take(ids.customers, cust),
        Reviews.product_id: _take(ids.products, rv["product"]),
        Reviews.score: pa.array(rv["score"].astype(np.int64)),
        Reviews.created_at: _ts(rv["created"], unit),
        Reviews.text: text,
        Reviews.language: pa.array(LANGS).take(pa.array(lang.astype(np.int64))),
    })


def _events_chunks(shop: Shop, ids: _Ids, unit: str) -> Iterator[pa.Table]:
    ev = shop.events
    types = pa.array(EVENT_TYPES)
    for a in range(0, max(ev["t"].size, 1), EVENT_CHUNK_ROWS):
        b = min(a + EVENT_CHUNK_ROWS, ev["t"].size)
        yield _table("events", {
            Events.event_id: _ids("E", np.arange(a + 1, b + 1), 10),
            Events.customer_id: _take(ids.customers, ev["cust"][a:b]),
            Events.session_id: _ids("S", ev["session"][a:b] + 1, 10),
            Events.event_type: types.take(pa.array(ev["type"][a:b].astype(np.int64))),
            Events.product_id: _take(ids.products, ev["product"][a:b]),
            Events.occurred_at: _ts(ev["t"][a:b], unit),
        })


# --- dirty rows -------------------------------------------------------------------------------


@dataclass(frozen=True)
class DirtySpec:
    """What can go wrong in one table's export and which columns carry it."""

    kinds: tuple[str, ...]
    key: tuple[str, ...]
    id_prefix: str = ""
    id_width: int = 0
    text_column: str | None = None  # holds bad-type values, so it is written as strings
    amount: str | None = None  # negative_amount
    orphan: tuple[str, str, int] | None = None  # column, id prefix, width
    enum: tuple[str, list[str]] | None = None
    out_of_range: tuple[str, list[Any]] | None = None
    changed: str | None = None  # the column a duplicate key disagrees on
    bad_values: tuple[str, ...] = ("n/a", "abc", "unknown", "-", "twelve")


BAD_DATES = ("2026-02-30 10:00:00", "not a date", "31/13/2026", "yesterday", "2026-13-01 00:00:00")
DIRTY: dict[str, DirtySpec] = {
    "customers": DirtySpec(
        ("duplicate_row", "duplicate_key", "bad_date", "future_timestamp", "unknown_enum", "out_of_range"),
        (Customers.customer_id,), "C", 7, text_column=Customers.signup_at,
        enum=(Customers.language, ["fr", "xx", "klingon"]),
        out_of_range=(Customers.birth_year, [1850.0, 2090.0, 0.0]), changed=Customers.region),
    "products": DirtySpec(
        ("duplicate_row", "duplicate_key", "bad_type", "negative_amount", "future_timestamp"),
        (Products.product_id,), "P", 4, text_column=Products.list_price, amount=Products.list_price,
        changed=Products.unit_cost,
        bad_values=("abc", "twelve", "1O.99", "??", "price on request")),  # nullable: never "n/a"
    "orders": DirtySpec(
        ("duplicate_row", "duplicate_key", "bad_type", "negative_amount", "orphan", "future_timestamp",
         "unknown_enum", "delivered_before_ordered"),
        (Orders.order_id,), "O", 9, text_column=Orders.total_amount, amount=Orders.total_amount,
        orphan=(Orders.customer_id, "C", 7), enum=(Orders.status, ["lost", "pending_review", "on_hold"]),
        changed=Orders.discount_amount),
    "order_items": DirtySpec(
        ("duplicate_row", "duplicate_key", "bad_type", "negative_amount", "orphan", "out_of_range"),
        (OrderItems.order_id, OrderItems.line_no), text_column=OrderItems.quantity,
        amount=OrderItems.unit_price, orphan=(OrderItems.order_id, "O", 9),
        out_of_range=(OrderItems.quantity, [0, 5_000_000, -2]), changed=OrderItems.unit_price),
    "returns": DirtySpec(
        ("duplicate_row", "duplicate_key", "bad_date", "negative_amount", "orphan", "future_timestamp",
         "unknown_enum"),
        (Returns.return_id,), "R", 8, text_column=Returns.requested_at, amount=Returns.refund_amount,
        orphan=(Returns.order_id, "O", 9), enum=(Returns.reason_code, ["lost_parcel", "wrong_colour", "?"]),
        changed=Returns.reason_text),
    "tickets": DirtySpec(
        ("duplicate_row", "duplicate_key", "bad_date", "orphan", "future_timestamp", "out_of_range",
         "unknown_enum"),
        (Tickets.ticket_id,), "T", 8, text_column=Tickets.opened_at, orphan=(Tickets.customer_id, "C", 7),
        enum=(Tickets.channel, ["fax", "pigeon", "sms_v2"]),
        out_of_range=(Tickets.satisfaction, [9.0, 0.0, 6.0]), changed=Tickets.agent_id),
    "reviews": DirtySpec(
        ("duplicate_row", "duplicate_key", "bad_type", "orphan", "future_timestamp", "out_of_range",
         "unknown_enum"),
        (Reviews.review_id,), "V", 8, text_column=Reviews.score, orphan=(Reviews.order_id, "O", 9),
        enum=(Reviews.language, ["xx", "klingon", "de-CH"]),
        out_of_range=(Reviews.score, ["0", "7", "10"]), changed=Reviews.text,
        bad_values=("five", "n/a", "abc", "***", "good")),
    "events": DirtySpec(
        ("duplicate_row", "duplicate_key", "future_timestamp", "unknown_enum"),
        (Events.event_id,), "E", 10, enum=(Events.event_type, ["wishlist_add", "page_scroll", "hover"]),
        changed=Events.occurred_at),
}


@dataclass
class DirtyPlan:
    """Which clean rows get a dirty sibling, of what kind, and where it is inserted.

    A duplicate is placed *before* its original: ingestion keeps the last copy of a key (the newer
    version), so the earlier, superseded copy is the one to quarantine.
    """

    base: np.ndarray  # clean row the dirty row is derived from
    kind: np.ndarray  # index into the table's kinds
    insert_before: np.ndarray  # clean row it is placed in front of (n_clean = at the very end)
    n_clean: int
    parent_rows: int  # rows of the referenced parent table, for orphan ids

    @property
    def size(self) -> int:
        return self.base.size


def _dirty_plan(rng: np.random.Generator, n_clean: int, share: float, kinds: tuple[str, ...],
                parent_rows: int, chunk: int) -> DirtyPlan:
    """About ``share`` of the rows, at least two of every kind when there is any dirt at all."""
    if share <= 0 or n_clean == 0:
        empty = np.zeros(0, dtype=np.int64)
        return DirtyPlan(empty, empty, empty, n_clean, parent_rows)
    n = max(round(share * n_clean), 2 * len(kinds))
    kind = np.resize(np.arange(len(kinds)), n)
    rng.shuffle(kind)
    base = rng.integers(0, n_clean, n)
    chunk_start = base // chunk * chunk
    chunk_end = np.minimum(chunk_start + chunk, n_clean)
    duplicate = np.isin(kind, [kinds.index(k) for k in ("duplicate_row", "duplicate_key")])
    # duplicates go in front of their original; the rest anywhere in the base row's chunk
    last = np.where(duplicate, base, np.where(chunk_end == n_clean, n_clean, chunk_end - 1))
    insert_before = chunk_start + (rng.random(n) * (last - chunk_start + 1)).astype(np.int64)
    insert_before = np.minimum(insert_before, last)
    order = np.lexsort((np.arange(n), insert_before))
    return DirtyPlan(base[order], kind[order], insert_before[order], n_clean, parent_rows)


def _as_text_column(table: pa.Table, column: str) -> pa.Table:
    """A messy export's column: every value as text, so one bad value fits in."""
    col = table.column(column)
    if pa.types.is_timestamp(col.type):
        text = pc.strftime(col.cast(pa.timestamp("s")), format=TS_TEXT)
    else:
        text = pc.cast(col, pa.string())
    return table.set_column(table.schema.get_field_index(column), column, text)


def _shift(value: Any, delta: timedelta) -> Any:
    """Move a timestamp (a datetime, or text in a text column) by ``delta``."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value + delta
    return (datetime.strptime(value, TS_TEXT) + delta).strftime(TS_TEXT)


def _mutate(table_name: str, kind: str, row: dict[str, Any], j: int, plan: DirtyPlan,
            rng: np.random.Generator, end: int) -> dict[str, Any]:
    """Turn a copy of a clean row into one dirty row of the given kind."""
    spec = DIRTY[table_name]
    row = dict(row)
    pick = int(rng.integers(0, 1_000_000))
    if kind == "duplicate_row":
        return row
    if kind == "duplicate_key":
        col = spec.changed
        value = row[col]
        if isinstance(value, datetime):
            row[col] = value + timedelta(seconds=37)
        elif isinstance(value, float):
            row[col] = round(value + 1.5, 2)
        elif isinstance(value, str) and value.replace(".", "", 1).isdigit():
            row[col] = str(round(float(value) + 1.5, 2))
        elif table_name == "customers":
            row[col] = REGIONS[(REGIONS.index(value) + 1) % len(REGIONS)] if value in REGIONS else "Mars"
        else:
            row[col] = f"{value or ''} (edited)"
        return row
    # every other kind gets a fresh key so that only its own defect makes it dirty
    if table_name == "order_items":
        row[OrderItems.line_no] = 100 + j
    else:
        row[spec.key[0]] = f"{spec.id_prefix}{plan.n_clean + 1 + j:0{spec.id_width}d}"
    ts_cols = [c for c in TABLES[table_name].timestamp_columns if c in row]
    text_col = spec.text_column
    if kind == "bad_type":
        row[text_col] = spec.bad_values[pick % len(spec.bad_values)]
    elif kind == "bad_date":
        row[text_col] = BAD_DATES[pick % len(BAD_DATES)]
    elif kind == "negative_amount":
        value = row[spec.amount]
        number = -abs(float(value if value is not None else 10.0)) - 1.0
        row[spec.amount] = str(round(number, 2)) if spec.amount == text_col else round(number, 2)
    elif kind == "orphan":
        col, prefix, width = spec.orphan
        row[col] = f"{prefix}{2 * plan.parent_rows + 1000 + j:0{width}d}"
    elif kind == "future_timestamp":  # the row's first timestamp lands 30-365 days after history
        main = row[ts_cols[0]]
        main = main if isinstance(main, datetime) else datetime.strptime(main, TS_TEXT)
        target = datetime(1970, 1, 1) + timedelta(seconds=end, days=30 + pick % 335)
        for col in ts_cols:
            row[col] = _shift(row[col], target - main)
    elif kind == "unknown_enum":
        col, values = spec.enum
        row[col] = values[pick % len(values)]
    elif kind == "out_of_range":
        col, values = spec.out_of_range
        value = values[pick % len(values)]
        row[col] = str(value) if col == text_col else value
    elif kind == "delivered_before_ordered":
        row[Orders.delivered_at] = row[Orders.ordered_at] - timedelta(days=2, hours=pick % 24)
        row[Orders.shipped_at] = None
        row[Orders.status] = "delivered"
        row[Orders.updated_at] = row[Orders.ordered_at]
    return row


def _key_text(row: dict[str, Any], key: tuple[str, ...]) -> str:
    return "|".join(str(row[k]) for k in key)


class _TableWriter:
    """Writes one table file chunk by chunk, inserting the planned dirty rows as it goes."""

    def __init__(self, path: Path, table_name: str, file_format: FileFormat) -> None:
        self.path, self.name, self.format = path, table_name, file_format
        self.writer: pq.ParquetWriter | pa_csv.CSVWriter | None = None
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if self.writer is None:
            if self.format == "parquet":
                self.writer = pq.ParquetWriter(self.path, table.schema, compression="zstd")
            else:
                options = pa_csv.WriteOptions(quoting_style="needed", quoting_header="none")
                self.writer = pa_csv.CSVWriter(self.path, table.schema, write_options=options)
        if self.format == "parquet":
            self.writer.write_table(table, row_group_size=1_000_000)
        else:
            self.writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _write_table(out_dir: Path, table_name: str, chunks: Iterator[pa.Table], plan: DirtyPlan,
                 rng: np.random.Generator, file_format: FileFormat, end: int,
                 manifest: list[tuple[str, str, int, str]]) -> int:
    """Write clean chunks with dirty rows woven in; record each dirty row's 1-based file row."""
    spec = DIRTY[table_name]
    writer = _TableWriter(out_dir / f"{table_name}.{file_format}", table_name, file_format)
    text_column = spec.text_column if plan.size else None
    done = 0
    j = 0
    try:
        for chunk in chunks:
            if text_column:
                chunk = _as_text_column(chunk, text_column)
            a, b = done, done + chunk.num_rows
            last_chunk = b == plan.n_clean
            lo, hi = np.searchsorted(plan.insert_before, [a, b], side="left")
            if last_chunk:  # rows placed after the very last clean row
                hi = plan.size
            if hi > lo:
                base_rows = chunk.take(pa.array(plan.base[lo:hi] - a)).to_pylist()
                dirty_rows = []
                for k, row in enumerate(base_rows):
                    kind = spec.kinds[plan.kind[lo + k]]
                    dirty_rows.append(_mutate(table_name, kind, row, j, plan, rng, end))
                    j += 1
                dirty = pa.Table.from_pylist(dirty_rows, schema=chunk.schema)
                clean_pos = np.arange(chunk.num_rows)
                dirty_pos = plan.insert_before[lo:hi] - a
                keys = np.concatenate([clean_pos, dirty_pos])
                tie = np.concatenate([np.ones(chunk.num_rows), np.zeros(hi - lo)])
                perm = np.lexsort((np.arange(keys.size), tie, keys))
                final_pos = np.empty_like(perm)
                final_pos[perm] = np.arange(perm.size)
                for k, row in enumerate(dirty_rows):
                    source_row = writer.rows + int(final_pos[chunk.num_rows + k]) + 1
                    manifest.append((table_name, _key_text(row, spec.key), source_row,
                                     spec.kinds[plan.kind[lo + k]]))
                chunk = pa.concat_tables([chunk, dirty]).take(pa.array(perm))
            writer.write(chunk)
            done = b
    finally:
        writer.close()
    return writer.rows


# --- planted facts ------------------------------------------------------------------------------


def _rate(numerator: np.ndarray, denominator: np.ndarray) -> float:
    d = float(np.sum(denominator))
    return round(float(np.sum(numerator)) / d, 4) if d else 0.0


def _planted_facts(w: World, shop: Shop, seed: int, end_date: str) -> dict[str, Any]:
    """The planted causes and what they did to this shop's data (measured on the clean rows)."""
    o, it, tk = shop.orders, shop.items, shop.tickets
    prods = w.products
    p = it["product"].astype(np.int64)
    delivered = o["delivered"][it["order"]] != NULL_T
    ret = it["returned"]
    ss = prods.size_sensitive[p] & delivered
    garment = (p == GARMENT.index) & delivered
    size_ret = ret & (it["reason"] == R_SIZE)
    done = o["delivered"] != NULL_T
    late_by_carrier = {CARRIERS[k]: _rate(o["late"] & done & (o["carrier"] == k), done & (o["carrier"] == k))
                       for k in range(len(CARRIERS))}
    late_total = max(int((o["late"] & done).sum()), 1)
    phone = (p == PHONE.index) & delivered
    after = o["t"][it["order"]] >= w.phone_spike
    jar = (p == FOOD_JAR.index) & delivered
    manual = (p == MANUAL.index) & delivered
    manual_orders = np.unique(it["order"][manual])
    usage = tk["category"] == TK_USAGE
    manual_usage = usage & (tk["product"] == MANUAL.index)
    team_stats = {}
    for k, team in enumerate(TEAMS):
        m = tk["team"] == k
        responded = m & (tk["first_response"] != NULL_T)
        hours = (tk["first_response"][responded] - tk["opened"][responded]) / HOUR
        sat = tk["satisfaction"][m]
        team_stats[team] = {
            "tickets": int(m.sum()),
            "median_first_response_hours": round(float(np.median(hours)), 2) if hours.size else None,
            "mean_satisfaction": round(float(np.nanmean(sat)), 3) if np.isfinite(sat).any() else None,
            "escalation_rate": _rate(tk["escalated"] & m, m),
        }
    arch = w.customers.archetype
    last_order = np.full(w.customers.n, NULL_T)
    np.maximum.at(last_order, o["cust"], o["t"])
    settled = w.end - 120 * DAY  # old enough for a next order to have happened
    tk_old = (tk["order"] >= 0) & (tk["opened"] < settled)
    tk_again = last_order[tk["cust"]] > tk["opened"]
    rv_cust = o["cust"][shop.reviews["order"]]
    rv_old = shop.reviews["created"] < settled
    rv_again = last_order[rv_cust] > shop.reviews["created"]
    rv_bad = shop.reviews["score"] <= 2
    policy_items = o["policy"][it["order"]] & delivered
    hunter_items = (arch[o["cust"][it["order"]]] == HUNTER) & delivered
    return {
        "generator": "tasks.data.synthetic.generate_shop",
        "seed": seed,
        "customers": int(w.customers.n),
        "history": {"start": _iso(w.cal.start), "end_date": end_date, "end_exclusive": _iso(w.end)},
        "signals": {
            "size_chart": {
                "rule": "size-sensitive lines (apparel, shoes) without a view_size_chart event for the product "
                        "in the 7 days before the order are returned for size_fit far more often",
                "size_fit_return_rate_with_chart": _rate(size_ret & ss & it["chart"], ss & it["chart"]),
                "size_fit_return_rate_without_chart": _rate(size_ret & ss & ~it["chart"], ss & ~it["chart"]),
            },
            "size_runs_small": {
                "product_id": GARMENT.product_id, "name": GARMENT.name,
                "size_fit_return_rate": _rate(size_ret & garment, garment),
                "other_size_sensitive_size_fit_rate": _rate(size_ret & ss & ~garment, ss & ~garment),
            },
            "late_carrier": {
                "carrier": CARRIERS[LATE_CARRIER],
                "late_share_by_carrier": late_by_carrier,
                "share_of_all_late_deliveries": round(
                    int((o["late"] & done & (o["carrier"] == LATE_CARRIER)).sum()) / late_total, 4),
                "effects": "delivery tickets, reviews with score <= 2 and logistics text (some written before "
                           "delivery), late_delivery returns",
            },
            "return_intent": {
                "rule": "viewing the return policy before purchase, past returns and discount-hunter orders "
                        "raise the return rate",
                "return_rate_policy_viewed": _rate(ret & policy_items, policy_items),
                "return_rate_policy_not_viewed": _rate(ret & delivered & ~policy_items, delivered & ~policy_items),
                "return_rate_discount_hunters": _rate(ret & hunter_items, hunter_items),
                "return_rate_others": _rate(ret & delivered & ~hunter_items, delivered & ~hunter_items),
            },
            "churn": {
                "rule": "after an order with an unresolved (resolved_at null) or escalated ticket, or a review "
                        "with score <= 2, the customer stops ordering with probability +0.5 / +0.38; loyal "
                        "customers react at 40% strength",
                "reorder_rate_after_unresolved_or_escalated_ticket": _rate(tk_again & tk_old & tk["bad"],
                                                                           tk_old & tk["bad"]),
                "reorder_rate_after_other_ticket": _rate(tk_again & tk_old & ~tk["bad"], tk_old & ~tk["bad"]),
                "reorder_rate_after_review_score_le_2": _rate(rv_again & rv_old & rv_bad, rv_old & rv_bad),
                "reorder_rate_after_review_score_ge_3": _rate(rv_again & rv_old & ~rv_bad, rv_old & ~rv_bad),
                "measured_on": "tickets/reviews at least 120 days before the end of history",
            },
            "phone_spike": {
                "product_id": PHONE.product_id, "name": PHONE.name,
                "week_start": _iso(w.phone_spike)[:10],
                "iso_week": pd.Timestamp(w.phone_spike, unit="s").strftime("%G-W%V"),
                "rule": "orders from this week on are returned for quality_defect at ~0.32 instead of ~0.025 "
                        "(a software update: battery, charging port, restarts)",
                "quality_return_rate_before": _rate(ret & phone & ~after & (it["reason"] == R_QUALITY),
                                                    phone & ~after),
                "quality_return_rate_after": _rate(ret & phone & after & (it["reason"] == R_QUALITY),
                                                   phone & after),
            },
            "fragile_food": {
                "product_id": FOOD_JAR.product_id, "name": FOOD_JAR.name,
                "damaged_in_transit_return_rate": _rate(ret & jar & (it["reason"] == R_DAMAGED), jar),
                "effects": "damaged_in_transit returns and damaged/packaging bad reviews",
            },
            "unclear_manual": {
                "product_id": MANUAL.product_id, "name": MANUAL.name,
                "manual_fixed_at": _iso(w.manual_fixed)[:10],
                "usage_question_tickets": int(manual_usage.sum()),
                "usage_question_tickets_per_100_orders": round(100 * int(manual_usage.sum())
                                                               / max(manual_orders.size, 1), 2),
                "usage_question_share_of_all_usage_tickets": _rate(manual_usage, usage),
            },
            "slow_team": {"team": TEAMS[SLOW_TEAM], "by_team": team_stats,
                          "effects": "slower first response, more escalations and unresolved tickets, lower "
                                     "satisfaction, and more bad reviews (service text) from its customers"},
            "archetypes": {
                "file": ARCHETYPES_FILE,
                "counts": {a: int((arch == k).sum()) for k, a in enumerate(ARCHETYPES)},
                "discount_hunters": "most orders 30-60% off, buy on promotion days, more bnpl and returns",
                "new_adopters": "65% of lines are products launched in the previous 14 days when any exist",
            },
        },
    }


# --- public API -------------------------------------------------------------------------------


class _Steps:
    """A rich progress bar over the generator's stages, or nothing at all."""

    STAGES = 5 + len(SOURCE_TABLES)

    def __init__(self, enabled: bool) -> None:
        self.progress = None
        if enabled:
            from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                     TimeElapsedColumn())

    def __enter__(self) -> _Steps:
        if self.progress is not None:
            self.progress.start()
            self.task = self.progress.add_task("synthetic shop", total=self.STAGES)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def step(self, description: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, description=description)

    def note(self, description: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=description)


def write_batch_manifest(out_dir: Path, end_date: str) -> Path:
    """``_batch.json``: the export's own clock (end of ``end_date``), so ingestion judges
    "future" timestamps against the data's time, not the wall clock."""
    path = Path(out_dir) / BATCH_MANIFEST
    exported = _iso(_epoch(end_date) + DAY).replace(" ", "T")
    path.write_text(json.dumps({"exported_at": exported, "source": "aftersales synthetic shop"}, indent=2))
    return path


def generate_shop(
    out_dir: Path,
    customers: int,
    seed: int,
    months: int = 18,
    end_date: str = "2026-11-01",
    dirty_share: float = 0.003,
    file_format: Literal["csv", "parquet"] = "parquet",
    progress: bool = False,
) -> dict[str, int]:
    """Write ``<out_dir>/<table>.<csv|parquet>`` for the eight source tables plus ``_planted.json``,
    ``_archetypes.csv``, ``_dirty_manifest.csv`` and ``_batch.json``; return rows written per table.

    Same arguments, same bytes: all randomness comes from ``numpy.random.default_rng(seed)``.
    """
    if file_format not in ("csv", "parquet"):
        raise ValueError(f"file_format must be csv or parquet, not {file_format!r}")
    if customers < 1:
        raise ValueError("customers must be at least 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    unit = "s" if file_format == "csv" else "us"
    with _Steps(progress) as step:
        step.note("building the world")
        w = _make_world(rng, customers, months, end_date)
        step.step("simulating orders")
        o, it, tk, rv = _simulate(rng, w, step)
        shop = _finalise(w, o, it, tk, rv)
        step.step("building events")
        shop.events = _events(rng, w, shop)
        step.step("writing tables")
        ids = _Ids(customers=_ids("C", np.arange(1, w.customers.n + 1), 7),
                   products=_ids("P", np.arange(1, w.products.n + 1), 4),
                   orders=_ids("O", np.arange(1, shop.orders["t"].size + 1), 9))
        names = {"en": pa.array(w.products.name), "zh": pa.array(w.products.name_zh)}
        parents = {"orders": w.customers.n, "tickets": w.customers.n, "order_items": shop.orders["t"].size,
                   "returns": shop.orders["t"].size, "reviews": shop.orders["t"].size}
        builders = {
            "customers": lambda: iter([_customers_table(w, ids, unit)]),
            "products": lambda: iter([_products_table(w, ids, unit)]),
            "orders": lambda: iter([_orders_table(shop, ids, unit)]),
            "order_items": lambda: iter([_items_table(shop, ids)]),
            "returns": lambda: iter([_returns_table(rng, w, shop, ids, names, unit)]),
            "tickets": lambda: iter([_tickets_table(rng, w, shop, ids, names, unit)]),
            "reviews": lambda: iter([_reviews_table(rng, w, shop, ids, names, unit)]),
            "events": lambda: _events_chunks(shop, ids, unit),
        }
        clean_rows = {
            "customers": w.customers.n, "products": w.products.n, "orders": shop.orders["t"].size,
            "order_items": shop.items["order"].size, "returns": shop.returns["order"].size,
            "tickets": shop.tickets["opened"].size, "reviews": shop.reviews["order"].size,
            "events": shop.events["t"].size,
        }
        counts: dict[str, int] = {}
        manifest: list[tuple[str, str, int, str]] = []
        for name in SOURCE_TABLES:
            step.step(f"writing {name}")
            chunk = EVENT_CHUNK_ROWS if name == "events" else max(clean_rows[name], 1)
            plan = _dirty_plan(rng, clean_rows[name], dirty_share, DIRTY[name].kinds,
                               parents.get(name, 0), chunk)
            counts[name] = _write_table(out_dir, name, builders[name](), plan, rng, file_format, w.end,
                                        manifest)
        step.step("writing manifests")
        _write_manifest(out_dir / DIRTY_MANIFEST, manifest)
        _write_archetypes(out_dir / ARCHETYPES_FILE, ids, w)
        facts = _planted_facts(w, shop, seed, end_date)
        facts["rows"] = counts
        facts["dirty_rows"] = {name: sum(1 for m in manifest if m[0] == name) for name in SOURCE_TABLES}
        (out_dir / PLANTED_FILE).write_text(json.dumps(facts, indent=2, ensure_ascii=False))
        write_batch_manifest(out_dir, end_date)
        step.step("done")
    return counts


def _write_manifest(path: Path, manifest: list[tuple[str, str, int, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["table", "key", "source_row", "kind"])
        out.writerows(manifest)


def _write_archetypes(path: Path, ids: _Ids, w: World) -> None:
    table = pa.table({
        "customer_id": ids.customers,
        "archetype": pa.array(ARCHETYPES).take(pa.array(w.customers.archetype.astype(np.int64))),
    })
    pa_csv.write_csv(table, path, pa_csv.WriteOptions(quoting_style="needed", quoting_header="none"))
