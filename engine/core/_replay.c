/* The silent replay loop of engine/core/replay.py, compiled.
 *
 * `SilentReplayer` (engine/core/replay.py) applies valid new orders and cancels by order id
 * without building events and hands everything else to `MatchingEngine.apply`. This is the
 * same loop in C: the same checks in the same order, the same state changes, the same
 * event count, on the same Python objects (the engine's dicts, levels and resting orders).
 * It exists because replay speed is bounded by the interpreter: the loop reads about twenty
 * attributes per command, which here are loads at fixed offsets.
 *
 * Attribute offsets are read once, in `configure`, from the member descriptors of the
 * engine's slotted classes and msgspec structs (engine/core/replay.py passes the types). Every
 * command is type-checked before its fields are read at those offsets. Any value the fast
 * path does not expect (a non-int number, a non-str name, an int beyond 64 bits) hands the
 * command to `apply` before anything changes, as the Python loop would for anything it does
 * not take. A property test (tests/test_replay_silent.py) runs random command streams
 * through `apply`, the Python loop and this one, and compares state hash and event count
 * after every command. Keep the three in step.
 *
 * Pure like the core: no clock, no I/O.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

/* Field offsets, one table per type. */
typedef struct {
    Py_ssize_t account, client_order_id, symbol, side, order_type, price, qty, tif, post_only, stp, seq;
} NewOffsets;
typedef struct {
    Py_ssize_t account, order_id, seq;
} CancelOffsets;

static NewOffsets off_new[2];       /* ReplayNewOrder, NewOrder */
static CancelOffsets off_cancel[2]; /* ReplayCancel, Cancel */
static struct {
    Py_ssize_t order_id, account, symbol, side, price, leaves, filled;
} off_order;
static struct {
    Py_ssize_t price, qty, orders;
} off_level;
static struct {
    Py_ssize_t levels, best;
} off_side;
static struct {
    Py_ssize_t book, bids, asks, tick, lot, min_qty, max_qty;
} off_market;
static Py_ssize_t off_book_symbol;
static struct {
    Py_ssize_t open, by_clid;
} off_account;

static PyTypeObject *new_types[2], *cancel_types[2];
static PyObject *resting_order_type, *account_orders_type;
static long long BUY, SELL, LIMIT, MARKET, GTC, IOC, STP_NEWEST, STP_BOTH;
static long long valid_stp[8];
static Py_ssize_t n_valid_stp;
static Py_ssize_t max_client_order_id_len, max_account_len;
static PyObject *self_trade_reason; /* CancelReason.SELF_TRADE as an int */
static int configured;

static PyObject *s_last_seq, *s_next_order_id, *s_next_trade_id, *s_risk_on, *s_last_price, *s_markets,
    *s_accounts, *s_new_level, *s_drop_level, *s_cancel_resting;

/* An exact int that fits 64 bits: 1 and its value, else 0 (no error set). */
static inline int
as_ll(PyObject *o, long long *out)
{
    if (o == NULL || !PyLong_CheckExact(o))
        return 0;
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow)
        return 0;
    *out = v;
    return 1;
}

/* A slot that must be set (the engine sets every slot in __init__). */
static inline PyObject *
get_slot(PyObject *obj, Py_ssize_t off)
{
    PyObject *v = SLOT(obj, off);
    if (v == NULL)
        PyErr_Format(PyExc_RuntimeError, "replay: unset slot in a %s", Py_TYPE(obj)->tp_name);
    return v;
}

/* Replace a slot's value; steals `value`. */
static inline void
set_slot(PyObject *obj, Py_ssize_t off, PyObject *value)
{
    PyObject *old = SLOT(obj, off);
    SLOT(obj, off) = value;
    Py_XDECREF(old);
}

/* slot += delta for an int slot. */
static int
add_to_slot(PyObject *obj, Py_ssize_t off, long long delta)
{
    long long v;
    if (!as_ll(SLOT(obj, off), &v)) {
        PyErr_Format(PyExc_RuntimeError, "replay: a %s holds a non-int quantity", Py_TYPE(obj)->tp_name);
        return -1;
    }
    PyObject *n = PyLong_FromLongLong(v + delta);
    if (n == NULL)
        return -1;
    set_slot(obj, off, n);
    return 0;
}

static inline int
str_eq(PyObject *a, PyObject *b)
{
    if (a == b)
        return 1;
    if (!PyUnicode_CheckExact(a) || !PyUnicode_CheckExact(b))
        return 0;
    return PyUnicode_Compare(a, b) == 0;
}

static int
member_offset(PyObject *type, const char *name, Py_ssize_t *out)
{
    PyObject *d = PyDict_GetItemString(((PyTypeObject *)type)->tp_dict, name);
    if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type)) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", ((PyTypeObject *)type)->tp_name, name);
        return -1;
    }
    PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
    if (m->type != T_OBJECT_EX || (m->flags & READONLY)) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not a writable object slot", ((PyTypeObject *)type)->tp_name, name);
        return -1;
    }
    *out = m->offset;
    return 0;
}

/* The replay of one batch: the Python loop's locals. */
typedef struct {
    PyObject *engine, *markets, *accounts, *known, *handoff;
    PyObject *last_seq_obj; /* owned */
    long long last_seq, next_oid;
    int risk_on;
    PyObject *cur_symbol, *cur_market; /* owned */
    long long events;
} Ctx;

static int
set_current(Ctx *c, PyObject *market)
{
    PyObject *book = get_slot(market, off_market.book);
    if (book == NULL)
        return -1;
    PyObject *symbol = get_slot(book, off_book_symbol);
    if (symbol == NULL)
        return -1;
    Py_INCREF(market);
    Py_XSETREF(c->cur_market, market);
    Py_INCREF(symbol);
    Py_XSETREF(c->cur_symbol, symbol);
    return 0;
}

static int
set_last_seq(Ctx *c, PyObject *seq_obj, long long seq)
{
    Py_INCREF(seq_obj);
    Py_XSETREF(c->last_seq_obj, seq_obj);
    c->last_seq = seq;
    return 0;
}

/* The engine's counters and risk switch, read back after `apply` changed them. */
static int
load_counters(Ctx *c)
{
    PyObject *v = PyObject_GetAttr(c->engine, s_last_seq);
    if (v == NULL)
        return -1;
    if (!as_ll(v, &c->last_seq)) {
        Py_DECREF(v);
        PyErr_SetString(PyExc_RuntimeError, "replay: engine.last_seq is not a 64-bit int");
        return -1;
    }
    Py_XSETREF(c->last_seq_obj, v);
    v = PyObject_GetAttr(c->engine, s_next_order_id);
    if (v == NULL)
        return -1;
    int ok = as_ll(v, &c->next_oid);
    Py_DECREF(v);
    if (!ok) {
        PyErr_SetString(PyExc_RuntimeError, "replay: engine.next_order_id is not a 64-bit int");
        return -1;
    }
    v = PyObject_GetAttr(c->engine, s_risk_on);
    if (v == NULL)
        return -1;
    c->risk_on = PyObject_IsTrue(v);
    Py_DECREF(v);
    return c->risk_on < 0 ? -1 : 0;
}

static int
store_counters(Ctx *c)
{
    if (PyObject_SetAttr(c->engine, s_last_seq, c->last_seq_obj) < 0)
        return -1;
    PyObject *n = PyLong_FromLongLong(c->next_oid);
    if (n == NULL)
        return -1;
    int rc = PyObject_SetAttr(c->engine, s_next_order_id, n);
    Py_DECREF(n);
    return rc;
}

/* A level's price-indexed removal, as BookSide.drop_level does it (kept in Python: rare). */
static int
drop_level(PyObject *side, PyObject *price)
{
    PyObject *r = PyObject_CallMethodOneArg(side, s_drop_level, price);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* Record the last fill's price and the trade ids used, as `_match` does. */
static int
note_trades(Ctx *c, PyObject *symbol, PyObject *traded, long long trades)
{
    if (traded == NULL)
        return 0;
    PyObject *last_price = PyObject_GetAttr(c->engine, s_last_price);
    if (last_price == NULL)
        return -1;
    int rc = PyDict_SetItem(last_price, symbol, traded);
    Py_DECREF(last_price);
    if (rc < 0)
        return -1;
    PyObject *next = PyObject_GetAttr(c->engine, s_next_trade_id);
    if (next == NULL)
        return -1;
    long long v;
    int ok = as_ll(next, &v);
    Py_DECREF(next);
    if (!ok) {
        PyErr_SetString(PyExc_RuntimeError, "replay: engine.next_trade_id is not a 64-bit int");
        return -1;
    }
    next = PyLong_FromLongLong(v + trades);
    if (next == NULL)
        return -1;
    rc = PyObject_SetAttr(c->engine, s_next_trade_id, next);
    Py_DECREF(next);
    return rc;
}

/* `_match_silently`: fills against `opp` until the order is done, the book no longer
 * crosses or self-trade prevention stops it. Sets *remaining, *stopped and adds the events
 * `_match` would have emitted to c->events. */
static int
match(Ctx *c, PyObject *opp, int is_buy, int is_market, long long limit, PyObject *account, long long stp,
      PyObject *seq_obj, PyObject *symbol, long long *remaining, int *stopped)
{
    long long left = *remaining, emitted = 0, trades = 0;
    PyObject *traded = NULL; /* the last fill's price, owned */
    PyObject *levels = get_slot(opp, off_side.levels);
    if (levels == NULL)
        return -1;
    *stopped = 0;
    while (left) {
        PyObject *price_obj = get_slot(opp, off_side.best);
        if (price_obj == NULL)
            goto error;
        if (price_obj == Py_None)
            break;
        long long price;
        if (!as_ll(price_obj, &price)) {
            PyErr_SetString(PyExc_RuntimeError, "replay: a non-int best price");
            goto error;
        }
        if (!is_market && (is_buy ? price > limit : price < limit))
            break;
        Py_INCREF(price_obj); /* a drop replaces opp.best */
        PyObject *level = PyDict_GetItemWithError(levels, price_obj);
        if (level == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_RuntimeError, "replay: the best price has no level");
            Py_DECREF(price_obj);
            goto error;
        }
        Py_INCREF(level);
        PyObject *orders = SLOT(level, off_level.orders);
        int level_gone = 0;
        while (left) {
            Py_ssize_t pos = 0;
            PyObject *key, *maker;
            if (!PyDict_Next(orders, &pos, &key, &maker)) {
                PyErr_SetString(PyExc_RuntimeError, "replay: an empty level in the book");
                goto error_level;
            }
            Py_INCREF(maker);
            long long mleaves;
            if (!as_ll(SLOT(maker, off_order.leaves), &mleaves)) {
                PyErr_SetString(PyExc_RuntimeError, "replay: a resting order with non-int leaves");
                goto error_maker;
            }
            PyObject *maker_account = SLOT(maker, off_order.account);
            if (stp && str_eq(maker_account, account)) {
                if (stp == STP_NEWEST) {
                    Py_DECREF(maker);
                    Py_DECREF(level);
                    Py_DECREF(price_obj);
                    *stopped = 1;
                    goto done;
                }
                /* Rare: the cancelled maker's event goes to a list nobody reads. */
                PyObject *sink = PyList_New(0);
                if (sink == NULL)
                    goto error_maker;
                PyObject *zero = PyLong_FromLong(0);
                PyObject *r = zero == NULL ? NULL
                                           : PyObject_CallMethodObjArgs(c->engine, s_cancel_resting, maker, opp,
                                                                        self_trade_reason, seq_obj, zero, sink, NULL);
                Py_XDECREF(zero);
                Py_DECREF(sink);
                Py_DECREF(maker);
                if (r == NULL)
                    goto error_level;
                Py_DECREF(r);
                emitted += 1;
                if (stp == STP_BOTH) {
                    Py_DECREF(level);
                    Py_DECREF(price_obj);
                    *stopped = 1;
                    goto done;
                }
                PyObject *best = SLOT(opp, off_side.best);
                long long b;
                if (best == Py_None || !as_ll(best, &b) || b != price) { /* that emptied the level */
                    level_gone = 1;
                    break;
                }
                continue;
            }
            long long fill = left < mleaves ? left : mleaves;
            left -= fill;
            mleaves -= fill;
            PyObject *n = PyLong_FromLongLong(mleaves);
            if (n == NULL)
                goto error_maker;
            set_slot(maker, off_order.leaves, n);
            if (add_to_slot(maker, off_order.filled, fill) < 0 || add_to_slot(level, off_level.qty, -fill) < 0)
                goto error_maker;
            trades += 1;
            Py_INCREF(price_obj);
            Py_XSETREF(traded, price_obj);
            if (!mleaves) {
                PyObject *maker_id = SLOT(maker, off_order.order_id);
                if (PyDict_DelItem(orders, maker_id) < 0)
                    goto error_maker;
                PyObject *acct = PyDict_GetItemWithError(c->accounts, maker_account);
                if (acct == NULL) {
                    if (!PyErr_Occurred())
                        PyErr_SetString(PyExc_RuntimeError, "replay: a resting order of an unknown account");
                    goto error_maker;
                }
                if (PyDict_DelItem(SLOT(acct, off_account.open), maker_id) < 0)
                    goto error_maker;
                emitted += 1; /* OrderDone of the maker (its Trade is counted in `trades`) */
                Py_DECREF(maker);
                if (PyDict_GET_SIZE(orders) == 0) {
                    if (drop_level(opp, price_obj) < 0)
                        goto error_level;
                    level_gone = 1;
                    break;
                }
                continue;
            }
            Py_DECREF(maker);
            continue;
        error_maker:
            Py_DECREF(maker);
        error_level:
            Py_DECREF(level);
            Py_DECREF(price_obj);
            goto error;
        }
        (void)level_gone;
        Py_DECREF(level);
        Py_DECREF(price_obj);
    }
done:
    if (note_trades(c, symbol, traded, trades) < 0)
        goto error;
    Py_XDECREF(traded);
    c->events += emitted + trades;
    *remaining = left;
    return 0;
error:
    Py_XDECREF(traded);
    return -1;
}

/* The replayer's cache entry for an account, (name, by_clid, open): borrowed (the known
 * dict holds it), NULL on error. */
static PyObject *
remember_account(Ctx *c, PyObject *account, PyObject *acct)
{
    PyObject *entry = PyTuple_Pack(3, account, SLOT(acct, off_account.by_clid), SLOT(acct, off_account.open));
    if (entry == NULL)
        return NULL;
    int rc = PyDict_SetItem(c->known, account, entry);
    Py_DECREF(entry);
    return rc < 0 ? NULL : entry;
}

/* A new order: 1 applied, 0 for `apply` (nothing changed), -1 error. */
static int
try_new(Ctx *c, PyObject *cmd, const NewOffsets *o)
{
    PyObject *seq_obj = SLOT(cmd, o->seq);
    long long seq;
    if (!as_ll(seq_obj, &seq))
        return 0;
    PyObject *symbol = SLOT(cmd, o->symbol);
    if (symbol == NULL || !PyUnicode_CheckExact(symbol))
        return 0;
    PyObject *market;
    if (c->cur_symbol != NULL && str_eq(symbol, c->cur_symbol)) {
        market = c->cur_market;
    }
    else {
        market = PyDict_GetItemWithError(c->markets, symbol);
        if (market == NULL) {
            if (PyErr_Occurred())
                return -1;
        }
        else if (set_current(c, market) < 0)
            return -1;
    }
    /* Risk checks (any limit, kill switch or halt set) are `apply`'s to make. */
    if (seq <= c->last_seq || market == NULL || c->risk_on)
        return 0;

    PyObject *side_obj = SLOT(cmd, o->side), *type_obj = SLOT(cmd, o->order_type), *price_obj = SLOT(cmd, o->price),
             *qty_obj = SLOT(cmd, o->qty), *tif_obj = SLOT(cmd, o->tif), *post_only_obj = SLOT(cmd, o->post_only),
             *stp_obj = SLOT(cmd, o->stp), *account = SLOT(cmd, o->account), *clid = SLOT(cmd, o->client_order_id);
    long long side, order_type, price, qty, tif, stp, best;
    if (!as_ll(side_obj, &side) || !as_ll(type_obj, &order_type) || !as_ll(price_obj, &price) ||
        !as_ll(qty_obj, &qty) || !as_ll(tif_obj, &tif) || !as_ll(stp_obj, &stp))
        return 0;
    if ((post_only_obj != Py_True && post_only_obj != Py_False) || account == NULL ||
        !PyUnicode_CheckExact(account) || clid == NULL || !PyUnicode_CheckExact(clid))
        return 0;
    int post_only = post_only_obj == Py_True;
    PyObject *own, *opp;
    if (side == BUY) {
        own = SLOT(market, off_market.bids);
        opp = SLOT(market, off_market.asks);
    }
    else if (side == SELL) {
        own = SLOT(market, off_market.asks);
        opp = SLOT(market, off_market.bids);
    }
    else
        return 0;
    if (own == NULL || opp == NULL)
        return 0;
    PyObject *best_obj = SLOT(opp, off_side.best);
    int crosses = 0;
    if (best_obj != NULL && best_obj != Py_None) {
        if (!as_ll(best_obj, &best))
            return 0;
        crosses = order_type == MARKET || (side == BUY ? best <= price : best >= price);
    }
    long long tick, lot, min_qty, max_qty;
    if (!as_ll(SLOT(market, off_market.tick), &tick) || !as_ll(SLOT(market, off_market.lot), &lot) ||
        !as_ll(SLOT(market, off_market.min_qty), &min_qty) || !as_ll(SLOT(market, off_market.max_qty), &max_qty) ||
        tick <= 0 || lot <= 0)
        return 0;
    /* The validation of `apply`, less fill-or-kill (left to it); a post-only order that
     * would cross is refused by `apply` too. */
    int stp_valid = 0;
    for (Py_ssize_t i = 0; i < n_valid_stp; i++)
        stp_valid |= stp == valid_stp[i];
    if (!(min_qty <= qty && qty <= max_qty && qty % lot == 0 &&
          ((order_type == LIMIT && price > 0 && price % tick == 0) || (order_type == MARKET && price == 0)) &&
          (tif == GTC || tif == IOC) && stp_valid &&
          (!post_only || (order_type == LIMIT && tif == GTC && !crosses)) &&
          PyUnicode_GET_LENGTH(clid) <= max_client_order_id_len))
        return 0;

    PyObject *oid = PyLong_FromLongLong(c->next_oid);
    if (oid == NULL)
        return -1;
    PyObject *by_clid, *acct_open;
    int has_clid = PyUnicode_GET_LENGTH(clid) > 0;
    PyObject *entry = PyDict_GetItemWithError(c->known, account);
    if (entry == NULL) {
        if (PyErr_Occurred())
            goto error;
        Py_ssize_t n = PyUnicode_GET_LENGTH(account);
        if (!(0 < n && n <= max_account_len)) {
            Py_DECREF(oid);
            return 0;
        }
        PyObject *acct = PyDict_GetItemWithError(c->accounts, account);
        if (acct == NULL) {
            if (PyErr_Occurred())
                goto error;
            /* A new account, registered with the order (its client-id registry is empty,
             * so the duplicate check below only registers the id). */
            acct = PyObject_CallNoArgs(account_orders_type);
            if (acct == NULL)
                goto error;
            int rc = PyDict_SetItem(c->accounts, account, acct);
            Py_DECREF(acct); /* the accounts dict holds it */
            if (rc < 0)
                goto error;
        }
        entry = remember_account(c, account, acct);
        if (entry == NULL)
            goto error;
    }
    account = PyTuple_GET_ITEM(entry, 0);
    by_clid = PyTuple_GET_ITEM(entry, 1);
    acct_open = PyTuple_GET_ITEM(entry, 2);
    /* A duplicate client id is refused by `apply`: checked before anything changes (the
     * registration of the id is the check). */
    if (has_clid) {
        PyObject *existing = PyDict_SetDefault(by_clid, clid, oid);
        if (existing == NULL)
            goto error;
        if (existing != oid) {
            int differs = PyObject_RichCompareBool(existing, oid, Py_NE);
            if (differs < 0)
                goto error;
            if (differs) {
                Py_DECREF(oid);
                return 0;
            }
        }
    }

    c->next_oid += 1;
    set_last_seq(c, seq_obj, seq);
    long long remaining = qty;
    PyObject *symbol_shared = c->cur_symbol;
    if (crosses) {
        int stopped;
        if (match(c, opp, side == BUY, order_type == MARKET, price, account, stp, seq_obj, symbol_shared,
                  &remaining, &stopped) < 0)
            goto error;
        if (!remaining || stopped) {
            c->events += 2; /* OrderAccepted, then OrderDone or OrderCancelled by self-trade prevention */
            Py_DECREF(oid);
            return 1;
        }
    }
    if (tif != GTC || order_type != LIMIT) {
        c->events += 2; /* OrderAccepted, OrderCancelled (IOC remainder or no liquidity) */
        Py_DECREF(oid);
        return 1;
    }
    c->events += 1; /* OrderAccepted */
    PyObject *levels = SLOT(own, off_side.levels);
    PyObject *level = PyDict_GetItemWithError(levels, price_obj);
    if (level == NULL) {
        if (PyErr_Occurred())
            goto error;
        level = PyObject_CallMethodOneArg(own, s_new_level, price_obj);
        if (level == NULL)
            goto error;
    }
    else
        Py_INCREF(level);
    /* The level's price object, not the decoded one: a cancel then finds the level without
     * reading another object. */
    PyObject *remaining_obj = PyLong_FromLongLong(remaining);
    PyObject *filled_obj = PyLong_FromLongLong(qty - remaining);
    PyObject *order = NULL;
    if (remaining_obj != NULL && filled_obj != NULL) {
        PyObject *args[13] = {oid,         account,      clid,         symbol_shared, side_obj,
                              SLOT(level, off_level.price), qty_obj, remaining_obj, filled_obj,
                              tif_obj,     post_only_obj, stp_obj,     seq_obj};
        order = PyObject_Vectorcall(resting_order_type, args, 13, NULL);
    }
    Py_XDECREF(remaining_obj);
    Py_XDECREF(filled_obj);
    if (order == NULL || PyDict_SetItem(SLOT(level, off_level.orders), oid, order) < 0 ||
        add_to_slot(level, off_level.qty, remaining) < 0 || PyDict_SetItem(acct_open, oid, order) < 0) {
        Py_XDECREF(order);
        Py_DECREF(level);
        goto error;
    }
    Py_DECREF(order);
    Py_DECREF(level);
    Py_DECREF(oid);
    return 1;
error:
    Py_DECREF(oid);
    return -1;
}

/* A cancel by order id of an open order: 1 applied, 0 for `apply`, -1 error. */
static int
try_cancel(Ctx *c, PyObject *cmd, const CancelOffsets *o)
{
    PyObject *seq_obj = SLOT(cmd, o->seq), *oid_obj = SLOT(cmd, o->order_id), *account = SLOT(cmd, o->account);
    long long seq, oid;
    if (!as_ll(seq_obj, &seq) || !as_ll(oid_obj, &oid) || account == NULL || !PyUnicode_CheckExact(account))
        return 0;
    /* With risk set, `apply` cancels: risk may watch the order flow (risk_watch.py). */
    if (seq <= c->last_seq || !oid || c->risk_on)
        return 0;
    PyObject *acct = PyDict_GetItemWithError(c->accounts, account);
    if (acct == NULL)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *acct_open = SLOT(acct, off_account.open);
    PyObject *order = PyDict_GetItemWithError(acct_open, oid_obj);
    if (order == NULL)
        return PyErr_Occurred() ? -1 : 0;
    Py_INCREF(order);
    set_last_seq(c, seq_obj, seq);
    PyObject *symbol = SLOT(order, off_order.symbol);
    if (symbol != c->cur_symbol) {
        PyObject *market = PyDict_GetItemWithError(c->markets, symbol);
        if (market == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_RuntimeError, "replay: a resting order of an unlisted symbol");
            goto error;
        }
        if (set_current(c, market) < 0)
            goto error;
    }
    long long order_side;
    if (!as_ll(SLOT(order, off_order.side), &order_side)) {
        PyErr_SetString(PyExc_RuntimeError, "replay: a resting order with a non-int side");
        goto error;
    }
    PyObject *side = SLOT(c->cur_market, order_side == BUY ? off_market.bids : off_market.asks);
    PyObject *price = SLOT(order, off_order.price);
    PyObject *level = PyDict_GetItemWithError(SLOT(side, off_side.levels), price);
    if (level == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "replay: a resting order without its level");
        goto error;
    }
    long long leaves;
    if (!as_ll(SLOT(order, off_order.leaves), &leaves)) {
        PyErr_SetString(PyExc_RuntimeError, "replay: a resting order with non-int leaves");
        goto error;
    }
    PyObject *orders = SLOT(level, off_level.orders);
    if (PyDict_DelItem(orders, oid_obj) < 0 || add_to_slot(level, off_level.qty, -leaves) < 0)
        goto error;
    if (PyDict_GET_SIZE(orders) == 0 && drop_level(side, price) < 0)
        goto error;
    if (PyDict_DelItem(acct_open, oid_obj) < 0)
        goto error;
    Py_DECREF(order);
    c->events += 1; /* OrderCancelled */
    return 1;
error:
    Py_DECREF(order);
    return -1;
}

static PyObject *
replay_batch(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "replay_batch(engine, known, commands, handoff)");
        return NULL;
    }
    if (!configured) {
        PyErr_SetString(PyExc_RuntimeError, "engine.core._replay is not configured");
        return NULL;
    }
    Ctx c = {0};
    PyObject *result = NULL;
    c.engine = args[0];
    c.known = args[1];
    c.handoff = args[3];
    if (!PyDict_CheckExact(c.known)) {
        PyErr_SetString(PyExc_TypeError, "known must be a dict");
        return NULL;
    }
    PyObject *commands = PySequence_Fast(args[2], "commands must be a sequence");
    if (commands == NULL)
        return NULL;
    c.markets = PyObject_GetAttr(c.engine, s_markets);
    c.accounts = c.markets ? PyObject_GetAttr(c.engine, s_accounts) : NULL;
    if (c.accounts == NULL || !PyDict_CheckExact(c.markets) || !PyDict_CheckExact(c.accounts)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "engine.markets and engine.accounts must be dicts");
        goto error;
    }
    if (load_counters(&c) < 0)
        goto error;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(commands);
    PyObject **items = PySequence_Fast_ITEMS(commands);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *cmd = items[i];
        PyTypeObject *kind = Py_TYPE(cmd);
        int done = 0;
        if (kind == new_types[0] || kind == new_types[1])
            done = try_new(&c, cmd, &off_new[kind == new_types[1]]);
        else if (kind == cancel_types[0] || kind == cancel_types[1])
            done = try_cancel(&c, cmd, &off_cancel[kind == cancel_types[1]]);
        if (done < 0)
            goto error_stored;
        if (done)
            continue;
        /* Everything else is `apply`'s (the handoff turns a replay prefix into its command). */
        if (store_counters(&c) < 0)
            goto error;
        PyObject *r = PyObject_CallOneArg(c.handoff, cmd);
        if (r == NULL)
            goto error;
        long long emitted;
        int ok = as_ll(r, &emitted);
        Py_DECREF(r);
        if (!ok) {
            PyErr_SetString(PyExc_TypeError, "the handoff must return an event count");
            goto error;
        }
        c.events += emitted;
        if (load_counters(&c) < 0)
            goto error;
    }
    if (store_counters(&c) < 0)
        goto error;
    result = PyLong_FromLongLong(c.events);
    goto done;
error_stored:
    /* A broken invariant: leave the counters where the state is, then raise. */
    {
        PyObject *exc_type, *exc_value, *exc_tb;
        PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
        if (store_counters(&c) < 0)
            PyErr_Clear();
        PyErr_Restore(exc_type, exc_value, exc_tb);
    }
error:
done:
    Py_DECREF(commands);
    Py_XDECREF(c.markets);
    Py_XDECREF(c.accounts);
    Py_XDECREF(c.last_seq_obj);
    Py_XDECREF(c.cur_symbol);
    Py_XDECREF(c.cur_market);
    return result; /* NULL on error */
}

/* -- configuration -------------------------------------------------------------------- */

static int
get_type(PyObject *spec, const char *key, PyObject **out)
{
    PyObject *t = PyDict_GetItemString(spec, key);
    if (t == NULL || !PyType_Check(t)) {
        PyErr_Format(PyExc_TypeError, "configure: %s must be a type", key);
        return -1;
    }
    *out = t;
    return 0;
}

static int
get_ll(PyObject *spec, const char *key, long long *out)
{
    PyObject *v = PyDict_GetItemString(spec, key);
    if (v == NULL || !as_ll(v, out)) {
        PyErr_Format(PyExc_TypeError, "configure: %s must be an int", key);
        return -1;
    }
    return 0;
}

static int
new_offsets(PyObject *t, NewOffsets *o)
{
    return member_offset(t, "account", &o->account) || member_offset(t, "client_order_id", &o->client_order_id) ||
                   member_offset(t, "symbol", &o->symbol) || member_offset(t, "side", &o->side) ||
                   member_offset(t, "order_type", &o->order_type) || member_offset(t, "price", &o->price) ||
                   member_offset(t, "qty", &o->qty) || member_offset(t, "tif", &o->tif) ||
                   member_offset(t, "post_only", &o->post_only) || member_offset(t, "stp", &o->stp) ||
                   member_offset(t, "seq", &o->seq)
               ? -1
               : 0;
}

static int
cancel_offsets(PyObject *t, CancelOffsets *o)
{
    return member_offset(t, "account", &o->account) || member_offset(t, "order_id", &o->order_id) ||
                   member_offset(t, "seq", &o->seq)
               ? -1
               : 0;
}

static PyObject *
configure(PyObject *module, PyObject *spec)
{
    if (!PyDict_Check(spec)) {
        PyErr_SetString(PyExc_TypeError, "configure(spec: dict)");
        return NULL;
    }
    PyObject *t_rnew, *t_new, *t_rcancel, *t_cancel, *t_order, *t_level, *t_side, *t_market, *t_book, *t_account;
    if (get_type(spec, "ReplayNewOrder", &t_rnew) || get_type(spec, "NewOrder", &t_new) ||
        get_type(spec, "ReplayCancel", &t_rcancel) || get_type(spec, "Cancel", &t_cancel) ||
        get_type(spec, "RestingOrder", &t_order) || get_type(spec, "Level", &t_level) ||
        get_type(spec, "BookSide", &t_side) || get_type(spec, "Market", &t_market) ||
        get_type(spec, "OrderBook", &t_book) || get_type(spec, "AccountOrders", &t_account))
        return NULL;
    if (new_offsets(t_rnew, &off_new[0]) || new_offsets(t_new, &off_new[1]) ||
        cancel_offsets(t_rcancel, &off_cancel[0]) || cancel_offsets(t_cancel, &off_cancel[1]) ||
        member_offset(t_order, "order_id", &off_order.order_id) ||
        member_offset(t_order, "account", &off_order.account) || member_offset(t_order, "symbol", &off_order.symbol) ||
        member_offset(t_order, "side", &off_order.side) || member_offset(t_order, "price", &off_order.price) ||
        member_offset(t_order, "leaves", &off_order.leaves) || member_offset(t_order, "filled", &off_order.filled) ||
        member_offset(t_level, "price", &off_level.price) || member_offset(t_level, "qty", &off_level.qty) ||
        member_offset(t_level, "orders", &off_level.orders) || member_offset(t_side, "levels", &off_side.levels) ||
        member_offset(t_side, "best", &off_side.best) || member_offset(t_market, "book", &off_market.book) ||
        member_offset(t_market, "bids", &off_market.bids) || member_offset(t_market, "asks", &off_market.asks) ||
        member_offset(t_market, "tick", &off_market.tick) || member_offset(t_market, "lot", &off_market.lot) ||
        member_offset(t_market, "min_qty", &off_market.min_qty) ||
        member_offset(t_market, "max_qty", &off_market.max_qty) ||
        member_offset(t_book, "symbol", &off_book_symbol) || member_offset(t_account, "open", &off_account.open) ||
        member_offset(t_account, "by_clid", &off_account.by_clid))
        return NULL;
    long long max_clid, max_account, self_trade;
    if (get_ll(spec, "BUY", &BUY) || get_ll(spec, "SELL", &SELL) || get_ll(spec, "LIMIT", &LIMIT) ||
        get_ll(spec, "MARKET", &MARKET) || get_ll(spec, "GTC", &GTC) || get_ll(spec, "IOC", &IOC) ||
        get_ll(spec, "STP_NEWEST", &STP_NEWEST) || get_ll(spec, "STP_BOTH", &STP_BOTH) ||
        get_ll(spec, "MAX_CLIENT_ORDER_ID_LEN", &max_clid) || get_ll(spec, "MAX_ACCOUNT_LEN", &max_account) ||
        get_ll(spec, "SELF_TRADE", &self_trade))
        return NULL;
    PyObject *stps = PyDict_GetItemString(spec, "VALID_STP");
    PyObject *fast = stps ? PySequence_Fast(stps, "configure: VALID_STP must be a sequence") : NULL;
    if (fast == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "configure: VALID_STP missing");
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (n > (Py_ssize_t)(sizeof(valid_stp) / sizeof(valid_stp[0]))) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "configure: too many STP modes");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!as_ll(PySequence_Fast_GET_ITEM(fast, i), &valid_stp[i])) {
            Py_DECREF(fast);
            PyErr_SetString(PyExc_TypeError, "configure: VALID_STP must hold ints");
            return NULL;
        }
    }
    Py_DECREF(fast);
    n_valid_stp = n;
    max_client_order_id_len = (Py_ssize_t)max_clid;
    max_account_len = (Py_ssize_t)max_account;
    Py_XSETREF(self_trade_reason, PyLong_FromLongLong(self_trade));
    new_types[0] = (PyTypeObject *)t_rnew;
    new_types[1] = (PyTypeObject *)t_new;
    cancel_types[0] = (PyTypeObject *)t_rcancel;
    cancel_types[1] = (PyTypeObject *)t_cancel;
    /* The types live as long as their modules; hold them anyway. */
    PyObject *held[] = {t_rnew, t_new, t_rcancel, t_cancel, t_order, t_account};
    for (size_t i = 0; i < sizeof(held) / sizeof(held[0]); i++)
        Py_INCREF(held[i]);
    Py_XSETREF(resting_order_type, Py_NewRef(t_order));
    Py_XSETREF(account_orders_type, Py_NewRef(t_account));
    configured = self_trade_reason != NULL;
    if (!configured)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)configure, METH_O,
     "configure(spec): the engine's types and constants; reads the slot offsets."},
    {"replay_batch", (PyCFunction)(void (*)(void))replay_batch, METH_FASTCALL,
     "replay_batch(engine, known, commands, handoff) -> events: the silent replay loop."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "engine.core._replay", "The silent replay loop, compiled (see engine/core/replay.py).", -1, methods,
};

PyMODINIT_FUNC
PyInit__replay(void)
{
    s_last_seq = PyUnicode_InternFromString("last_seq");
    s_next_order_id = PyUnicode_InternFromString("next_order_id");
    s_next_trade_id = PyUnicode_InternFromString("next_trade_id");
    s_risk_on = PyUnicode_InternFromString("risk_on");
    s_last_price = PyUnicode_InternFromString("last_price");
    s_markets = PyUnicode_InternFromString("markets");
    s_accounts = PyUnicode_InternFromString("accounts");
    s_new_level = PyUnicode_InternFromString("new_level");
    s_drop_level = PyUnicode_InternFromString("drop_level");
    s_cancel_resting = PyUnicode_InternFromString("cancel_resting");
    if (!s_last_seq || !s_next_order_id || !s_next_trade_id || !s_risk_on || !s_last_price || !s_markets ||
        !s_accounts || !s_new_level || !s_drop_level || !s_cancel_resting)
        return NULL;
    return PyModule_Create(&module_def);
}
