"""Texts of ``observatory demo``: system prompts, questions, answers, tool results.

Made-up data for a made-up outdoor retailer; kept apart from demo.py so that file stays about
generating and sending traces.
"""

from __future__ import annotations

import random
from typing import Any

# fmt: off
USER_NAMES = (
    "ada", "grace", "alan", "katherine", "linus", "margaret", "dennis", "barbara", "ken", "radia",
    "tim", "frances", "edsger", "hedy", "john", "sophie", "guido", "anita", "bjarne", "joan",
)
# fmt: on
SUPPORT_SYSTEM = (
    "You are the customer support agent of Northwind Outfitters. Be concise and friendly. Use "
    "the tools to look up orders and the help centre; never invent order details."
)
SUPPORT_FALLBACK = (
    "I'm sorry, our order system is not answering right now, so I can't check that for you. "
    "I've noted your request and a colleague will email you within 24 hours."
)
RESEARCH_SYSTEM = (
    "You answer questions about Northwind's internal documents. Cite the documents you use by "
    "title in square brackets. If the context does not contain the answer, say so."
)
CLASSIFY_SYSTEM = "Classify the change as one of: bugfix, feature, refactor, docs, chore."
REVIEW_SYSTEM = (
    "You are a careful senior reviewer. Point out bugs, missing tests and risky changes. Number "
    "your findings and keep each to one or two sentences."
)
TRIAGE_SYSTEM = (
    "Route incoming customer email: choose a queue (billing, shipping, product, spam) and a "
    "priority, then call create_ticket."
)
PRODUCTS = ("trail running shoes", "rain jacket", "40L backpack", "down sleeping bag", "headlamp")
CARRIERS = ("DHL", "UPS", "FedEx", "PostNL")
SUPPORT_TOPICS = ("order_status", "refund", "address", "sizing")
RESEARCH_CASES: list[dict[str, Any]] = [
    {
        "question": "What were the main drivers of churn in Q3?",
        "documents": [
            {
                "title": "Q3 churn analysis",
                "snippet": "Churn rose to 4.1% (Q2: 3.2%), driven by "
                "delivery delays in the EU and the end of the summer discount.",
            },
            {
                "title": "Logistics review Sept",
                "snippet": "Average EU delivery time grew from "
                "3.1 to 5.4 days after the warehouse move.",
            },
        ],
        "answer": "Churn rose from 3.2% to 4.1% in Q3 [Q3 churn analysis]. The two main drivers "
        "were slower EU deliveries after the warehouse move, from 3.1 to 5.4 days on average "
        "[Logistics review Sept], and the end of the summer discount [Q3 churn analysis].",
    },
    {
        "question": "How many days do customers have to return an item?",
        "documents": [
            {
                "title": "Returns policy v7",
                "snippet": "Items can be returned within 30 days of "
                "delivery; 60 days for loyalty members. Worn footwear is excluded.",
            },
        ],
        "answer": "Customers have 30 days from delivery to return an item, or 60 days if they "
        "are loyalty members; worn footwear cannot be returned [Returns policy v7].",
    },
    {
        "question": "Which supplier had the highest defect rate last quarter?",
        "documents": [
            {
                "title": "Supplier scorecard Q3",
                "snippet": "Defect rates: Alpine Textiles 0.8%, "
                "Kestrel Footwear 2.9%, Nordic Gear 1.1%.",
            },
            {
                "title": "QA incident log",
                "snippet": "Kestrel batch 2291 recalled for sole delamination.",
            },
        ],
        "answer": "Kestrel Footwear had the highest defect rate at 2.9% [Supplier scorecard Q3], "
        "including batch 2291, recalled for sole delamination [QA incident log].",
    },
    {
        "question": "Summarise the plan for the holiday campaign.",
        "documents": [
            {
                "title": "Holiday campaign brief",
                "snippet": "Launch Nov 24, focus on gift bundles, "
                "free shipping over $75, budget $420k split 60/40 paid social/search.",
            },
        ],
        "answer": "The holiday campaign launches on November 24 with gift bundles and free "
        "shipping over $75; the $420k budget is split 60/40 between paid social and search "
        "[Holiday campaign brief].",
    },
]
REVIEW_CASES: list[dict[str, Any]] = [
    {
        "repo": "northwind/checkout",
        "pr": "1842",
        "label": "bugfix",
        "diff": "--- a/cart.py\n+++ b/cart.py\n@@ def total(items):\n-    return sum(i.price for "
        "i in items)\n+    return sum(i.price * i.quantity for i in items)\n",
        "review": "1. The fix is right: quantity was ignored in the total.\n2. Add a test with a "
        "quantity above 1; none of the existing tests would have caught this.\n3. Consider "
        "Decimal for prices to avoid float rounding in totals.",
    },
    {
        "repo": "northwind/storefront",
        "pr": "977",
        "label": "feature",
        "diff": '+def search(query: str, limit: int = 20):\n+    sql = f"SELECT * FROM products '
        "WHERE name LIKE '%{query}%' LIMIT {limit}\"\n+    return db.execute(sql)\n",
        "review": "1. SQL injection: the query is interpolated into SQL. Use bound parameters.\n"
        "2. `limit` is not validated; cap it to avoid expensive scans.\n3. Select only the "
        "columns the page needs instead of `*`.",
    },
    {
        "repo": "northwind/warehouse",
        "pr": "311",
        "label": "refactor",
        "diff": "-class StockService:\n-    def reserve(self, sku, n): ...\n"
        "+class Inventory:\n+    def reserve(self, sku: str, n: int) -> bool: ...\n",
        "review": "1. Renaming the public class breaks the two importers in `jobs/`; keep an alias "
        "for one release.\n2. The new return value is never checked by callers.",
    },
]
TRIAGE_CASES: list[dict[str, Any]] = [
    {
        "email": "Hi, I was charged twice for order 51234. Please refund the duplicate. - Maria",
        "ticket": {
            "queue": "billing",
            "priority": "high",
            "summary": "Duplicate charge, order 51234",
        },
    },
    {
        "email": "My parcel shows delivered but I never got it. Tracking 1Z999AA10123456784.",
        "ticket": {
            "queue": "shipping",
            "priority": "high",
            "summary": "Parcel marked delivered, not received",
        },
    },
    {
        "email": "Does the rain jacket come in XXL? Thanks!",
        "ticket": {"queue": "product", "priority": "low", "summary": "Size availability question"},
    },
    {
        "email": "CONGRATULATIONS you have won a free cruise, click here to claim",
        "ticket": {"queue": "spam", "priority": "low", "summary": "Spam"},
    },
]


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "parts": [{"type": "text", "content": text}]}


def assistant(text: str) -> dict[str, Any]:
    return {
        "role": "assistant",
        "parts": [{"type": "text", "content": text}],
        "finish_reason": "stop",
    }


def assistant_tool_calls(calls: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "role": "assistant",
        "parts": [{"type": "tool_call", **call} for call in calls],
        "finish_reason": "tool_calls",
    }


def tool_response(call_id: str, result: Any) -> dict[str, Any]:
    return {
        "role": "tool",
        "parts": [{"type": "tool_call_response", "id": call_id, "response": result}],
    }


def timeout_stacktrace(tool: str) -> str:
    return (
        "Traceback (most recent call last):\n"
        '  File "agent/tools.py", line 88, in run_tool\n'
        f"    return await asyncio.wait_for(TOOLS[{tool!r}](**args), timeout=5.0)\n"
        '  File "/usr/lib/python3.12/asyncio/tasks.py", line 520, in wait_for\n'
        "    raise exceptions.TimeoutError() from exc\n"
        "TimeoutError"
    )


def support_case(rng: random.Random, topic: str) -> dict[str, Any]:
    """A question, the tool calls it needs, their results and the final answer."""
    order = str(rng.randint(40000, 59999))
    product = rng.choice(PRODUCTS)
    carrier = rng.choice(CARRIERS)
    day = rng.choice(("Monday", "Tuesday", "Wednesday", "Thursday", "Friday"))

    def call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        return {"id": f"call_{rng.getrandbits(40):010x}", "name": name, "arguments": arguments}

    if topic == "order_status":
        return {
            "question": f"Hi! Where is my order #{order}? It was supposed to arrive {day}.",
            "calls": [call("lookup_order", {"order_id": order})],
            "results": [
                {
                    "order_id": order,
                    "status": "in_transit",
                    "carrier": carrier,
                    "items": [product],
                    "eta": f"{day}, 18:00",
                }
            ],
            "answer": f"Your order #{order} ({product}) is on its way with {carrier} and should "
            f"arrive by {day} 6 pm. You'll get an email with the tracking link as soon as it is "
            "out for delivery.",
        }
    if topic == "refund":
        return {
            "question": f"The {product} I bought last week already broke. Can I get a refund?",
            "calls": [call("search_help_center", {"query": "refund defective item"})],
            "results": [
                [
                    {
                        "title": "Refunds and returns",
                        "snippet": "Defective items are "
                        "refunded in full within 30 days, shipping included.",
                    }
                ]
            ],
            "answer": f"I'm sorry about your {product}! Defective items are refunded in full "
            "within 30 days, including shipping. Reply with your order number and a photo and "
            "I'll start the return for you.",
        }
    if topic == "address":
        return {
            "question": f"Can I still change the delivery address for order #{order}?",
            "calls": [
                call("lookup_order", {"order_id": order}),
                call("update_shipping_address", {"order_id": order, "allowed": True}),
            ],
            "results": [
                {"order_id": order, "status": "packing", "carrier": carrier},
                {"ok": True, "editable_until": "today 16:00"},
            ],
            "answer": f"Yes: order #{order} is still being packed, so you can change the address "
            "until 4 pm today. I've sent you a secure link to enter the new address.",
        }
    return {
        "question": f"I'm between sizes for the {product}. Should I size up?",
        "calls": [call("search_help_center", {"query": f"size guide {product}"})],
        "results": [
            [
                {
                    "title": "Size guide",
                    "snippet": f"The {product} runs small; customers "
                    "between sizes should choose the larger one.",
                }
            ]
        ],
        "answer": f"The {product} runs a little small, so we recommend the larger size. If it "
        "doesn't fit, exchanges are free within 30 days.",
    }
