"""FIX 4.4 vocabulary used by the gateway: tag numbers, message types and the reason
codes of Reject (3), BusinessMessageReject (j), ExecutionReport (8) and
OrderCancelReject (9)."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Tag(IntEnum):
    Account = 1
    AvgPx = 6
    BeginSeqNo = 7
    ClOrdID = 11
    Commission = 12  # the fill's fee in units of the instrument's quote asset (negative: a rebate)
    CommType = 13  # "3": absolute (Commission is an amount, not per unit or a percentage)
    CumQty = 14
    EndSeqNo = 16
    ExecID = 17
    ExecInst = 18
    LastPx = 31
    LastQty = 32
    MsgSeqNum = 34
    MsgType = 35
    NewSeqNo = 36
    OrderID = 37
    OrderQty = 38
    OrdStatus = 39
    OrdType = 40
    OrigClOrdID = 41
    PossDupFlag = 43
    Price = 44
    RefSeqNum = 45
    SenderCompID = 49
    SendingTime = 52
    Side = 54
    Symbol = 55
    TargetCompID = 56
    Text = 58
    TimeInForce = 59
    TransactTime = 60
    EncryptMethod = 98
    CxlRejReason = 102
    OrdRejReason = 103
    HeartBtInt = 108
    TestReqID = 112
    OrigSendingTime = 122
    GapFillFlag = 123
    ResetSeqNumFlag = 141
    ExecType = 150
    LeavesQty = 151
    RefTagID = 371
    RefMsgType = 372
    SessionRejectReason = 373
    BusinessRejectRefID = 379
    BusinessRejectReason = 380
    CxlRejResponseTo = 434
    Username = 553
    Password = 554


def tag_name(tag: int) -> str:
    try:
        return f"{Tag(tag).name}({tag})"
    except ValueError:
        return f"tag {tag}"


class MsgType(StrEnum):
    HEARTBEAT = "0"
    TEST_REQUEST = "1"
    RESEND_REQUEST = "2"
    REJECT = "3"
    SEQUENCE_RESET = "4"
    LOGOUT = "5"
    LOGON = "A"
    EXECUTION_REPORT = "8"
    ORDER_CANCEL_REJECT = "9"
    NEW_ORDER_SINGLE = "D"
    ORDER_CANCEL_REQUEST = "F"
    ORDER_CANCEL_REPLACE_REQUEST = "G"
    BUSINESS_MESSAGE_REJECT = "j"


# Session-level messages: never stored for resend, replaced by a gap fill instead.
ADMIN_MSG_TYPES = frozenset({"0", "1", "2", "3", "4", "5", "A"})


class SessionRejectReason(IntEnum):  # tag 373
    INVALID_TAG_NUMBER = 0
    REQUIRED_TAG_MISSING = 1
    TAG_NOT_DEFINED_FOR_MESSAGE = 2
    UNDEFINED_TAG = 3
    TAG_WITHOUT_VALUE = 4
    VALUE_INCORRECT = 5
    INCORRECT_DATA_FORMAT = 6
    COMPID_PROBLEM = 9
    SENDING_TIME_ACCURACY = 10
    INVALID_MSG_TYPE = 11
    TAG_APPEARS_MORE_THAN_ONCE = 13
    TAG_OUT_OF_ORDER = 14
    OTHER = 99


class BusinessRejectReason(IntEnum):  # tag 380
    OTHER = 0
    UNKNOWN_ID = 1
    UNKNOWN_SECURITY = 2
    UNSUPPORTED_MESSAGE_TYPE = 3
    APPLICATION_NOT_AVAILABLE = 4
    CONDITIONALLY_REQUIRED_FIELD_MISSING = 5
    NOT_AUTHORIZED = 6


class ExecType(StrEnum):  # tag 150
    NEW = "0"
    CANCELED = "4"
    REPLACED = "5"
    REJECTED = "8"
    TRADE = "F"


class OrdStatus(StrEnum):  # tag 39
    NEW = "0"
    PARTIALLY_FILLED = "1"
    FILLED = "2"
    CANCELED = "4"
    REJECTED = "8"


class OrdRejReason(IntEnum):  # tag 103
    EXCHANGE_OPTION = 0
    UNKNOWN_SYMBOL = 1
    EXCHANGE_CLOSED = 2  # kill switches, trading halts
    ORDER_EXCEEDS_LIMIT = 3  # pre-trade risk limits
    DUPLICATE_ORDER = 6
    UNSUPPORTED_ORDER_CHARACTERISTIC = 11
    INCORRECT_QUANTITY = 13
    UNKNOWN_ACCOUNT = 15
    OTHER = 99


class CxlRejReason(IntEnum):  # tag 102
    TOO_LATE_TO_CANCEL = 0
    UNKNOWN_ORDER = 1
    EXCHANGE_OPTION = 2
    DUPLICATE_CLORDID = 6
    OTHER = 99


class CxlRejResponseTo(StrEnum):  # tag 434
    CANCEL = "1"
    CANCEL_REPLACE = "2"
