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
    _ix("last_updated", ("ts", ASC)),
    IndexModel([("ts", DESC), ("oid", DESC)], name="system_history"),
    # compartments: a patient's chart of one type (`/Patient/1/Observation`) and all of it ($everything)
    _ix("compartment", ("cp", ASC)),
    IndexModel([("cp", ASC)], name="everything"),
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
    # work lists: referrals (Task) and orders (ServiceRequest) by status, then sorted by date
    _ix("status", ("ix.status", ASC)),
]

#: Fields a search may start from (each the second key of an index above), most selective first.
DRIVING_FIELDS = [
    "_id", "ix.identifier", "cp", "ix.patient", "ix.subject", "ix.encounter", "ix.phone", "ix.family", "ix.name",
    "ix.given", "ix.birthdate.lo", "ix.code", "ix.status", "ts",
]

HISTORY = [
    IndexModel([("type", ASC), ("id", ASC), ("vid", DESC)], name="instance_history"),
    IndexModel([("type", ASC), ("ts", DESC), ("oid", DESC)], name="type_history"),
    IndexModel([("ts", DESC), ("oid", DESC)], name="system_history"),
]
