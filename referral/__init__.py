"""The referral exchange with the district hospitals: for now, matching the patients they refer to ours.

This module is the room's public face: `emr/` and the other rooms import from `referral` only.
Built on `fhir_store`'s face alone, never on `emr` or a web framework (`scripts/check_layers.py`).
"""

from referral.identifiers import (
    BHYT_SYSTEMS,
    CCCD_SYSTEMS,
    InsuranceNumber,
    NationalNumbers,
    citizen_id,
    insurance_number,
    national_numbers,
)
from referral.matching import GRADES, Candidate, MatchGrade, PatientMatcher
from referral.signing import (
    SignatureRefused,
    VerifiedPackage,
    canonical_json,
    key_fingerprint,
    short_fingerprint,
    sign_package,
    verify_package,
)

__all__ = [
    "BHYT_SYSTEMS", "CCCD_SYSTEMS", "GRADES", "Candidate", "InsuranceNumber", "MatchGrade", "NationalNumbers",
    "PatientMatcher", "citizen_id", "insurance_number", "national_numbers",
    "SignatureRefused", "VerifiedPackage", "canonical_json", "key_fingerprint", "short_fingerprint", "sign_package",
    "verify_package",
]
