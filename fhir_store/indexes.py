"""Every index the store creates, in one place (documented in docs/architecture.md).

Type comes first in each compound key, so one type's entries are one index
range. At most one array-valued field (`ix.*`) sits in a compound key, with
scalar sort keys (`sk.*`) after it: MongoDB cannot index two parallel arrays.
"""

from __future__ import annotations

from pymongo import ASCENDING as ASC
from pymongo import DESCENDING as DESC
from pymongo import IndexModel


def _ix(name: str, *keys: tuple[str, int]) -> IndexModel:
    return IndexModel([("type", ASC), *keys], name=name)


RESOURCES = [
    # listing and default (by id) paging per type; history
    _ix("type_id", ("_id", ASC)),
    _ix("type_history", ("ts", DESC), ("oid", DESC)),
    IndexModel([("ts", DESC), ("oid", DESC)], name="system_history"),
    # finding a patient at the desk
    _ix("identifier", ("ix.identifier", ASC)),
    _ix("name", ("ix.name", ASC)),
    _ix("family", ("ix.family", ASC)),
    _ix("given", ("ix.given", ASC)),
    _ix("birthdate", ("ix.birthdate.lo", ASC), ("ix.birthdate.hi", ASC)),
    _ix("phone", ("ix.phone", ASC)),
    # a patient's chart: by patient (or subject), newest first, and by code
    _ix("patient_date", ("ix.patient", ASC), ("sk.date", DESC)),
    _ix("subject_date", ("ix.subject", ASC), ("sk.date", DESC)),
    _ix("code_date", ("ix.code", ASC), ("sk.date", DESC)),
    _ix("encounter", ("ix.encounter", ASC)),
    # work lists: referrals and orders by status and date
    _ix("status_authored_on", ("ix.status", ASC), ("sk.authored-on", DESC)),
    _ix("status_authored", ("ix.status", ASC), ("sk.authored", DESC)),
]

HISTORY = [
    IndexModel([("type", ASC), ("id", ASC), ("vid", DESC)], name="instance_history"),
    IndexModel([("type", ASC), ("ts", DESC), ("oid", DESC)], name="type_history"),
    IndexModel([("ts", DESC), ("oid", DESC)], name="system_history"),
]
