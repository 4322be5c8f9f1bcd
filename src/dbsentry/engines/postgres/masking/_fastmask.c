/*
 * _fastmask: the per-row loops of result masking, in C.
 *
 * An optional speed-up of dbsentry/engines/postgres/masking/rows.py: mask_data_rows() and
 * mask_copy_rows() do what rows._py_mask_data_rows() and
 * CopyMasker._py_mask_frames() do, byte for byte (a property test compares
 * them).  They read the same plans: a tuple with, per column, None or an op
 * tuple (kind, ...) described in rows.py.  Ops that need Python (hashing,
 * value detection, fitting to char(n)...) call back the masker; COPY lines
 * that need unescaping go back to Python whole.  Value detection (OP_SCAN)
 * first runs prefilter(), the twin of strategies.may_hold_sensitive(): most
 * values cannot hold anything the detectors find and are left without a call.
 *
 * The input comes from the database server and is not trusted: every length
 * read from it is checked against the end of its frame before it is used, and
 * anything that does not add up raises ProtocolError (the session ends).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define OP_NONE 0
#define OP_CONST 1
#define OP_EMAIL 2
#define OP_KEEP_LAST 3
#define OP_CALL 4
#define OP_SCAN 5

/* masked values remembered per column and result (rows.CACHE_SIZE) */
#define CACHE_SIZE 4096
#define MAX_FRAME 0xFFFFFFFFu

static PyObject *ProtocolError; /* dbsentry.engines.postgres.wire.codec.ProtocolError */
static unsigned char IS_DIGIT[256];
static unsigned char IS_ALNUM[256];
static uint16_t CLS[256]; /* prefilter classes, C_* below */

typedef struct {
    int kind;
    const unsigned char *data; /* OP_CONST value, OP_EMAIL placeholder */
    Py_ssize_t len;
    const unsigned char *cls; /* OP_KEEP_LAST: IS_DIGIT or IS_ALNUM */
    Py_ssize_t t1, k1, t2, k2;
    PyObject *fn;    /* OP_CALL/OP_SCAN masker (borrowed from the plan) */
    PyObject *cache; /* OP_CALL/OP_SCAN dict or NULL (borrowed from the plan) */
    int ip;          /* OP_SCAN: the prefilter lets IP-address shapes through too */
} Op;

typedef struct {
    unsigned char *p;
    Py_ssize_t len;
    Py_ssize_t cap;
} Out;

static int
out_reserve(Out *o, Py_ssize_t extra)
{
    if (extra < 0 || extra > PY_SSIZE_T_MAX - o->len) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t need = o->len + extra;
    if (need <= o->cap)
        return 0;
    Py_ssize_t cap = o->cap ? o->cap : 4096;
    while (cap < need) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    unsigned char *p = PyMem_Realloc(o->p, (size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    o->p = p;
    o->cap = cap;
    return 0;
}

static inline int
out_put(Out *o, const unsigned char *src, Py_ssize_t n)
{
    if (n <= 0)
        return 0;
    if (out_reserve(o, n) < 0)
        return -1;
    memcpy(o->p + o->len, src, (size_t)n);
    o->len += n;
    return 0;
}

static inline uint32_t
get_be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static inline void
set_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static inline int
out_be32(Out *o, uint32_t v)
{
    if (out_reserve(o, 4) < 0)
        return -1;
    set_be32(o->p + o->len, v);
    o->len += 4;
    return 0;
}

static void
protocol_error(const char *msg)
{
    PyErr_SetString(ProtocolError, msg);
}

/* ------------------------------------------------------------------ plans */

static int
as_ssize(PyObject *tuple, Py_ssize_t i, Py_ssize_t *out)
{
    Py_ssize_t v = PyLong_AsSsize_t(PyTuple_GET_ITEM(tuple, i));
    if (v == -1 && PyErr_Occurred())
        return -1;
    *out = v;
    return 0;
}

/* Read a plan (a tuple of None or op tuples) into ops[]; the pointers in ops
   borrow from the plan, which the caller holds. */
static Op *
parse_plan(PyObject *plan, Py_ssize_t *n_out)
{
    if (!PyTuple_Check(plan)) {
        PyErr_SetString(PyExc_TypeError, "plan must be a tuple");
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(plan);
    Op *ops = PyMem_Calloc((size_t)(n ? n : 1), sizeof(Op));
    if (ops == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GET_ITEM(plan, i);
        Op *op = &ops[i];
        if (item == Py_None) {
            op->kind = OP_NONE;
            continue;
        }
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) < 2) {
            PyErr_SetString(PyExc_TypeError, "a plan op must be a tuple (kind, ...)");
            goto fail;
        }
        long kind = PyLong_AsLong(PyTuple_GET_ITEM(item, 0));
        if (kind == -1 && PyErr_Occurred())
            goto fail;
        PyObject *a = PyTuple_GET_ITEM(item, 1);
        switch (kind) {
        case OP_CONST:
        case OP_EMAIL:
            if (!PyBytes_Check(a)) {
                PyErr_SetString(PyExc_TypeError, "a constant must be bytes");
                goto fail;
            }
            op->data = (const unsigned char *)PyBytes_AS_STRING(a);
            op->len = PyBytes_GET_SIZE(a);
            break;
        case OP_KEEP_LAST: {
            if (PyTuple_GET_SIZE(item) < 6) {
                PyErr_SetString(PyExc_TypeError, "keep-last op needs alnum, t1, k1, t2, k2");
                goto fail;
            }
            int alnum = PyObject_IsTrue(a);
            if (alnum < 0)
                goto fail;
            op->cls = alnum ? IS_ALNUM : IS_DIGIT;
            if (as_ssize(item, 2, &op->t1) < 0 || as_ssize(item, 3, &op->k1) < 0
                || as_ssize(item, 4, &op->t2) < 0 || as_ssize(item, 5, &op->k2) < 0)
                goto fail;
            break;
        }
        case OP_CALL:
        case OP_SCAN: {
            if (PyTuple_GET_SIZE(item) < (kind == OP_SCAN ? 4 : 3) || !PyCallable_Check(a)) {
                PyErr_SetString(PyExc_TypeError, "call op needs a masker and a cache");
                goto fail;
            }
            if (kind == OP_SCAN) {
                int ip = PyObject_IsTrue(PyTuple_GET_ITEM(item, 3));
                if (ip < 0)
                    goto fail;
                op->ip = ip;
            }
            PyObject *cache = PyTuple_GET_ITEM(item, 2);
            if (cache != Py_None && !PyDict_Check(cache)) {
                PyErr_SetString(PyExc_TypeError, "a cache must be a dict or None");
                goto fail;
            }
            op->fn = a;
            op->cache = cache == Py_None ? NULL : cache;
            break;
        }
        default:
            PyErr_Format(PyExc_ValueError, "unknown plan op %ld", kind);
            goto fail;
        }
        op->kind = (int)kind;
    }
    *n_out = n;
    return ops;
fail:
    PyMem_Free(ops);
    return NULL;
}

/* Where the kept tail of a value starts: its digits (or letters and digits)
   before that become "*" (pg_values._keep_last_bytes with the thresholds of
   _partial_bytes). */
static Py_ssize_t
keep_last_from(const Op *op, const unsigned char *v, Py_ssize_t n)
{
    const unsigned char *cls = op->cls;
    Py_ssize_t count = 0;
    for (Py_ssize_t j = 0; j < n; j++)
        count += cls[v[j]];
    Py_ssize_t keep = count >= op->t1 ? op->k1 : count >= op->t2 ? op->k2 : 0;
    Py_ssize_t i = n, seen = 0;
    while (i > 0 && seen < keep) {
        i--;
        if (cls[v[i]])
            seen++;
    }
    if (seen < keep)
        i = n;
    return i;
}

/* ------------------------------------------------------------------ prefilter */

/* What may_hold_sensitive() in strategies.py tests, in one pass; see the rules
   there.  1 when the detectors could find something in v[0:n], else 0. */
#define C_COUNT 1 /* an ASCII digit or a UTF-8 lead byte of a Unicode digit (DIGIT_LEADS) */
#define C_TAIL 2  /* an ASCII digit or any non-ASCII byte: may end a digit */
#define C_UPPER 4
#define C_LETTER 8
#define C_HEX 16
#define C_LOOK 32 /* a byte where a rule needs a closer look */
#define C_END 64  /* an ASCII digit or a continuation byte: may end a digit */
#define C_RUN 128 /* one of " ().+-": keeps a run of digits going */
#define C_DIGIT 256 /* an ASCII digit */
/* a byte that is none of these (most letters) only ends a run of digits */
#define C_SLOW (C_DIGIT | C_COUNT | C_RUN | C_LOOK)

/* The UTF-8 lead bytes of the characters Python's \d matches (strategies._DIGIT_LEADS). */
static const unsigned char DIGIT_LEADS[] = {0xd9, 0xdb, 0xdf, 0xe0, 0xe1, 0xea, 0xef, 0xf0};

static inline int
starts(const unsigned char *v, Py_ssize_t i, Py_ssize_t n, const char *lit, Py_ssize_t len)
{
    return n - i >= len && memcmp(v + i, lit, (size_t)len) == 0;
}

static int
prefilter_bytes(const unsigned char *v, Py_ssize_t n, int ip)
{
    Py_ssize_t digits = 0, dollars = 0, run = 0;
    int plus = 0, adjacent = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        const unsigned char c = v[i];
        const uint16_t k = CLS[c];
        if (!(k & C_SLOW)) {
            run = 0;
            plus = 0;
            continue;
        }
        if (k & C_DIGIT) {
            /* ASCII digits in a run of " ().+-" */
            if (++run >= 9 || (plus && run >= 8))
                return 1;
        }
        else if (!(k & C_RUN)) {
            run = 0;
            plus = 0;
        }
        if (k & C_COUNT) {
            digits++;
            if (c == '5' && i >= 2 && v[i - 2] == 'm' && v[i - 1] == 'd')
                return 1; /* md5 */
            /* two letters, then two digits: an IBAN (seen from its first digit) */
            if (i >= 2 && i + 1 < n && (CLS[v[i - 1]] & C_LETTER) && (CLS[v[i - 2]] & C_LETTER)
                && (CLS[v[i + 1]] & C_TAIL))
                return 1;
        }
        if (!(k & C_LOOK))
            continue;
        if (k & C_LETTER) {
            if ((k & C_UPPER) && !adjacent) {
                /* an uppercase letter next to a digit, or one " " or "-" away */
                if ((i + 1 < n && (CLS[v[i + 1]] & C_COUNT))
                    || (i + 2 < n && (v[i + 1] == ' ' || v[i + 1] == '-')
                        && (CLS[v[i + 2]] & C_COUNT))
                    || (i >= 1 && (CLS[v[i - 1]] & C_END))
                    || (i >= 2 && (v[i - 1] == ' ' || v[i - 1] == '-')
                        && (CLS[v[i - 2]] & C_END)))
                    adjacent = 1;
            }
            /* key prefixes, each found from its rarest byte */
            switch (c) {
            case 'A':
                if (n - i >= 4) {
                    static const char *const aws[] = {"AKIA", "ASIA", "AGPA", "AIDA", "AROA",
                                                      "AIPA", "ANPA", "ANVA", "AIza"};
                    for (size_t j = 0; j < sizeof aws / sizeof aws[0]; j++)
                        if (memcmp(v + i, aws[j], 4) == 0)
                            return 1;
                }
                break;
            case 'E':
                if (starts(v, i, n, "ECRET", 5))
                    return 1;
                break;
            case 'S':
                if (starts(v, i, n, "SCRAM-", 6))
                    return 1;
                break;
            case 'J': /* eyJ */
                if (i >= 2 && v[i - 2] == 'e' && v[i - 1] == 'y')
                    return 1;
                break;
            case 'c': /* ecret */
                if (i >= 1 && v[i - 1] == 'e' && starts(v, i + 1, n, "ret", 3))
                    return 1;
                break;
            case 'x':
                if (starts(v, i, n, "xox", 3))
                    return 1;
                break;
            default:
                break;
            }
            continue;
        }
        switch (c) {
        case '@':
            return 1;
        case '_': /* sk_, rk_, gh[pousr]_, dbs_, pbkdf2_, github_pat_ */
            if (i >= 2 && (v[i - 2] == 's' || v[i - 2] == 'r') && v[i - 1] == 'k')
                return 1;
            if (i >= 3 && v[i - 3] == 'g' && v[i - 2] == 'h'
                && (v[i - 1] == 'p' || v[i - 1] == 'o' || v[i - 1] == 'u' || v[i - 1] == 's'
                    || v[i - 1] == 'r'))
                return 1;
            if (i >= 3 && memcmp(v + i - 3, "dbs", 3) == 0)
                return 1;
            if (i >= 6 && memcmp(v + i - 6, "pbkdf2", 6) == 0)
                return 1;
            if (i >= 6 && memcmp(v + i - 6, "github", 6) == 0 && starts(v, i + 1, n, "pat_", 4))
                return 1;
            break;
        case '+':
            plus = 1;
            if (run >= 8)
                return 1;
            break;
        case '$':
            dollars++;
            break;
        case '\\':
            if (i + 1 < n && v[i + 1] == 'u')
                return 1;
            break;
        case '-':
            if (starts(v, i, n, "-----BEGIN", 10))
                return 1;
            break;
        case ':':
            if (ip
                && ((i >= 1 && ((CLS[v[i - 1]] & C_HEX) || v[i - 1] == ':'))
                    || (i + 1 < n && (CLS[v[i + 1]] & C_HEX))))
                return 1;
            break;
        case '.':
            if (ip && i >= 1 && i + 1 < n && IS_DIGIT[v[i - 1]] && IS_DIGIT[v[i + 1]])
                return 1;
            break;
        default:
            break;
        }
    }
    return dollars >= 3 || (digits >= 6 && adjacent);
}

/* Position of the last "@" in v[0:n], or -1. */
static Py_ssize_t
last_at(const unsigned char *v, Py_ssize_t n)
{
    for (Py_ssize_t j = n - 1; j >= 0; j--)
        if (v[j] == '@')
            return j;
    return -1;
}

/* The common head of the two functions: (buffer, pos) with 0 <= pos <= len. */
static int
get_buffer(PyObject *obj, PyObject *pos_obj, Py_buffer *view, Py_ssize_t *pos)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0)
        return -1;
    *pos = PyLong_AsSsize_t(pos_obj);
    if (*pos == -1 && PyErr_Occurred()) {
        PyBuffer_Release(view);
        return -1;
    }
    if (*pos < 0 || *pos > view->len) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "pos is outside the buffer");
        return -1;
    }
    return 0;
}

/* The frame at b[pos:limit] of type t: its end, or -1 with ProtocolError. */
static Py_ssize_t
frame_end(const unsigned char *b, Py_ssize_t pos, Py_ssize_t limit)
{
    if (limit - pos < 5) {
        protocol_error("truncated message");
        return -1;
    }
    uint32_t flen = get_be32(b + pos + 1);
    if (flen < 4 || (Py_ssize_t)flen > limit - pos - 1) {
        protocol_error("invalid message length");
        return -1;
    }
    return pos + 1 + (Py_ssize_t)flen;
}

static PyObject *
finish(Out *out, int changed, Py_ssize_t count, Py_ssize_t pos)
{
    PyObject *data;
    if (changed) {
        data = PyBytes_FromStringAndSize((const char *)out->p, out->len);
        if (data == NULL) {
            PyMem_Free(out->p);
            return NULL;
        }
    }
    else {
        data = Py_NewRef(Py_None);
    }
    PyMem_Free(out->p);
    return Py_BuildValue("(Nnn)", data, count, pos);
}

/* ------------------------------------------------------------------ DataRow */

/* An OP_CALL column: the masker's result (None or bytes) encoded by `encode`,
   from the column's cache when the value was seen, and remembered there while
   it has room.  New reference, or NULL with an exception set.  `raw` is the
   value the masker was given (a masker that leaves a value returns it). */
typedef PyObject *(*Encoder)(PyObject *res, PyObject *raw, const void *ctx);

static PyObject *
call_masker(const Op *op, const unsigned char *v, Py_ssize_t n, Encoder encode, const void *ctx)
{
    PyObject *raw = PyBytes_FromStringAndSize((const char *)v, n);
    if (raw == NULL)
        return NULL;
    PyObject *enc = NULL;
    if (op->cache != NULL) {
        enc = PyDict_GetItemWithError(op->cache, raw);
        if (enc != NULL) {
            if (!PyBytes_Check(enc)) {
                PyErr_SetString(PyExc_TypeError, "masking cache holds a non-bytes value");
                enc = NULL;
            }
            else {
                Py_INCREF(enc);
            }
            Py_DECREF(raw);
            return enc;
        }
        if (PyErr_Occurred()) {
            Py_DECREF(raw);
            return NULL;
        }
    }
    PyObject *res = PyObject_CallOneArg(op->fn, raw);
    if (res == NULL) {
        Py_DECREF(raw);
        return NULL;
    }
    if (res == Py_None || PyBytes_Check(res)) {
        enc = encode(res, raw, ctx);
    }
    else {
        PyErr_SetString(PyExc_TypeError, "a masker must return bytes or None");
    }
    Py_DECREF(res);
    if (enc != NULL && op->cache != NULL && PyDict_GET_SIZE(op->cache) < CACHE_SIZE) {
        if (PyDict_SetItem(op->cache, raw, enc) < 0) {
            Py_CLEAR(enc);
        }
    }
    Py_DECREF(raw);
    return enc;
}

/* A DataRow field: length and bytes, or the NULL length. */
static PyObject *
encode_row_field(PyObject *res, PyObject *raw, const void *ctx)
{
    (void)ctx;
    (void)raw;
    if (res == Py_None)
        return PyBytes_FromStringAndSize("\xff\xff\xff\xff", 4);
    Py_ssize_t rl = PyBytes_GET_SIZE(res);
    if (rl > INT32_MAX - 4) {
        protocol_error("masked value is too long");
        return NULL;
    }
    PyObject *enc = PyBytes_FromStringAndSize(NULL, rl + 4);
    if (enc != NULL) {
        unsigned char *e = (unsigned char *)PyBytes_AS_STRING(enc);
        set_be32(e, (uint32_t)rl);
        memcpy(e + 4, PyBytes_AS_STRING(res), (size_t)rl);
    }
    return enc;
}

PyDoc_STRVAR(mask_data_rows_doc,
"mask_data_rows(buf, pos, width, plan) -> (bytes | None, count, end)\n\n"
"Mask the DataRow frames that follow each other in buf from pos; see\n"
"dbsentry.engines.postgres.masking.rows.mask_data_rows.");

static PyObject *
mask_data_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "mask_data_rows(buf, pos, width, plan)");
        return NULL;
    }
    long width = PyLong_AsLong(args[2]);
    if (width == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t nops;
    Op *ops = parse_plan(args[3], &nops);
    if (ops == NULL)
        return NULL;
    Py_buffer view;
    Py_ssize_t pos;
    if (get_buffer(args[0], args[1], &view, &pos) < 0) {
        PyMem_Free(ops);
        return NULL;
    }
    const unsigned char *b = view.buf;
    const Py_ssize_t limit = view.len;
    Out out = {NULL, 0, 0};
    Py_ssize_t count = 0;
    int changed = 0;
    if (out_reserve(&out, limit - pos + 1024) < 0)
        goto error;
    while (pos < limit && b[pos] == 'D') {
        Py_ssize_t fend = frame_end(b, pos, limit);
        if (fend < 0)
            goto error;
        Py_ssize_t body = pos + 5;
        if (fend - body < 2 || (long)((b[body] << 8) | b[body + 1]) != width) {
            protocol_error("DataRow does not match its RowDescription");
            goto error;
        }
        Py_ssize_t hdr = out.len;
        if (out_put(&out, b + pos, 5) < 0) /* its length is set below */
            goto error;
        Py_ssize_t p = body + 2;
        Py_ssize_t seg = body; /* b[seg:p] is not written yet */
        for (Py_ssize_t c = 0; c < nops; c++) {
            if (fend - p < 4) {
                protocol_error("DataRow is shorter than its columns");
                goto error;
            }
            int32_t ln = (int32_t)get_be32(b + p);
            if (ln < 0) {
                if (ln != -1) {
                    protocol_error("invalid field length in DataRow");
                    goto error;
                }
                p += 4;
                continue;
            }
            if ((Py_ssize_t)ln > fend - p - 4) {
                protocol_error("invalid field length in DataRow");
                goto error;
            }
            const Py_ssize_t vs = p + 4, ve = vs + ln;
            const Op *op = &ops[c];
            if (op->kind == OP_NONE
                || (op->kind == OP_SCAN && !prefilter_bytes(b + vs, ln, op->ip))) {
                p = ve;
                continue;
            }
            changed = 1;
            if (out_put(&out, b + seg, p - seg) < 0)
                goto error;
            switch (op->kind) {
            case OP_CONST:
                if (out_put(&out, op->data, op->len) < 0)
                    goto error;
                break;
            case OP_EMAIL: {
                Py_ssize_t at = last_at(b + vs, ln);
                if (at > 0) {
                    Py_ssize_t dlen = ln - at - 1;
                    if (out_be32(&out, (uint32_t)(5 + dlen)) < 0
                        || out_put(&out, (const unsigned char *)"****@", 5) < 0
                        || out_put(&out, b + vs + at + 1, dlen) < 0)
                        goto error;
                }
                else if (out_put(&out, op->data, op->len) < 0) {
                    goto error;
                }
                break;
            }
            case OP_KEEP_LAST: {
                Py_ssize_t from = keep_last_from(op, b + vs, ln);
                if (out_reserve(&out, 4 + (Py_ssize_t)ln) < 0)
                    goto error;
                unsigned char *w = out.p + out.len;
                memcpy(w, b + p, 4);
                w += 4;
                const unsigned char *cls = op->cls;
                for (Py_ssize_t j = 0; j < from; j++) {
                    unsigned char ch = b[vs + j];
                    w[j] = cls[ch] ? '*' : ch;
                }
                memcpy(w + from, b + vs + from, (size_t)(ln - from));
                out.len += 4 + (Py_ssize_t)ln;
                break;
            }
            default: { /* OP_CALL, OP_SCAN */
                PyObject *enc = call_masker(op, b + vs, ln, encode_row_field, NULL);
                if (enc == NULL)
                    goto error;
                int r = out_put(&out, (const unsigned char *)PyBytes_AS_STRING(enc),
                                PyBytes_GET_SIZE(enc));
                Py_DECREF(enc);
                if (r < 0)
                    goto error;
                break;
            }
            }
            seg = ve;
            p = ve;
        }
        if (out_put(&out, b + seg, fend - seg) < 0)
            goto error;
        Py_ssize_t size = out.len - hdr - 1;
        if ((uint64_t)size > MAX_FRAME) {
            protocol_error("masked DataRow is too long");
            goto error;
        }
        set_be32(out.p + hdr + 1, (uint32_t)size);
        pos = fend;
        count++;
    }
    PyBuffer_Release(&view);
    PyMem_Free(ops);
    return finish(&out, changed, count, pos);
error:
    PyBuffer_Release(&view);
    PyMem_Free(ops);
    PyMem_Free(out.p);
    return NULL;
}

/* ------------------------------------------------------------------ COPY text */

/* ch escaped for COPY text format at w (room for 2 bytes); the next position. */
static inline unsigned char *
escape_byte(unsigned char *w, unsigned char ch, unsigned char delim)
{
    switch (ch) {
    case '\\':
        *w++ = '\\';
        *w++ = '\\';
        break;
    case '\n':
        *w++ = '\\';
        *w++ = 'n';
        break;
    case '\r':
        *w++ = '\\';
        *w++ = 'r';
        break;
    case '\t':
        *w++ = '\\';
        *w++ = 't';
        break;
    default:
        if (ch == delim)
            *w++ = '\\';
        *w++ = ch;
    }
    return w;
}

/* s[0:n], a masked value, in COPY text format (rows._copy_text_encode). */
static int
put_escaped(Out *o, const unsigned char *s, Py_ssize_t n, unsigned char delim)
{
    if (n <= 0)
        return 0;
    if (n > (PY_SSIZE_T_MAX - o->len) / 2 || out_reserve(o, 2 * n) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    unsigned char *w = o->p + o->len;
    for (Py_ssize_t j = 0; j < n; j++)
        w = escape_byte(w, s[j], delim);
    o->len = w - o->p;
    return 0;
}

/* A COPY text field: the value escaped for the delimiter, or the NULL string;
   a value a scan left (keep_same) is written as it came. */
typedef struct {
    PyObject *null;
    unsigned char delim;
    int keep_same; /* OP_SCAN: a value the scan returns as it was is written as it came */
} CopyText;

static PyObject *
encode_copy_field(PyObject *res, PyObject *raw, const void *ctx)
{
    const CopyText *c = (const CopyText *)ctx;
    if (res == Py_None)
        return Py_NewRef(c->null);
    if (c->keep_same && res == raw)
        return Py_NewRef(raw);
    Out tmp = {NULL, 0, 0};
    PyObject *enc = NULL;
    if (put_escaped(&tmp, (const unsigned char *)PyBytes_AS_STRING(res), PyBytes_GET_SIZE(res),
                    c->delim) == 0)
        enc = PyBytes_FromStringAndSize((const char *)(tmp.p ? tmp.p : (unsigned char *)""),
                                        tmp.len);
    PyMem_Free(tmp.p);
    return enc;
}

/* One field b[fs:fe] of a plain text line, masked by op, written escaped. */
static int
copy_field(Out *out, const Op *op, const unsigned char *b, Py_ssize_t fs, Py_ssize_t fe,
           PyObject *null, unsigned char delim)
{
    const Py_ssize_t n = fe - fs;
    switch (op->kind) {
    case OP_CONST:
        return out_put(out, op->data, op->len);
    case OP_EMAIL: {
        Py_ssize_t at = last_at(b + fs, n);
        if (at > 0) {
            if (put_escaped(out, (const unsigned char *)"****@", 5, delim) < 0)
                return -1;
            return put_escaped(out, b + fs + at + 1, n - at - 1, delim);
        }
        return out_put(out, op->data, op->len);
    }
    case OP_KEEP_LAST: {
        Py_ssize_t from = keep_last_from(op, b + fs, n);
        const unsigned char *cls = op->cls;
        if (n > (PY_SSIZE_T_MAX - out->len) / 2 || out_reserve(out, 2 * n) < 0) {
            PyErr_NoMemory();
            return -1;
        }
        unsigned char *w = out->p + out->len;
        for (Py_ssize_t j = 0; j < n; j++) {
            unsigned char ch = b[fs + j];
            w = escape_byte(w, j < from && cls[ch] ? '*' : ch, delim);
        }
        out->len = w - out->p;
        return 0;
    }
    default: { /* OP_CALL, OP_SCAN */
        const CopyText text = {null, delim, op->kind == OP_SCAN};
        PyObject *enc = call_masker(op, b + fs, n, encode_copy_field, &text);
        if (enc == NULL)
            return -1;
        int r = out_put(out, (const unsigned char *)PyBytes_AS_STRING(enc), PyBytes_GET_SIZE(enc));
        Py_DECREF(enc);
        return r;
    }
    }
}

PyDoc_STRVAR(mask_copy_rows_doc,
"mask_copy_rows(buf, pos, delimiter, null, plan, fallback) -> (bytes | None, count, end)\n\n"
"Mask the CopyData frames (text format) that follow each other in buf from pos;\n"
"see dbsentry.engines.postgres.masking.rows.CopyMasker.mask_frames.  A line with a backslash, or\n"
"that is not one line ending in its only newline, goes to fallback(line).");

static PyObject *
mask_copy_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "mask_copy_rows(buf, pos, delimiter, null, plan, fallback)");
        return NULL;
    }
    long delim_l = PyLong_AsLong(args[2]);
    if (delim_l == -1 && PyErr_Occurred())
        return NULL;
    if (delim_l < 1 || delim_l > 127 || delim_l == '\\' || delim_l == '\n' || delim_l == '\r') {
        PyErr_SetString(PyExc_ValueError, "unsupported COPY delimiter");
        return NULL;
    }
    const unsigned char delim = (unsigned char)delim_l;
    PyObject *null = args[3];
    if (!PyBytes_Check(null)) {
        PyErr_SetString(PyExc_TypeError, "null must be bytes");
        return NULL;
    }
    const unsigned char *null_s = (const unsigned char *)PyBytes_AS_STRING(null);
    const Py_ssize_t null_n = PyBytes_GET_SIZE(null);
    PyObject *fallback = args[5];
    if (!PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_TypeError, "fallback must be callable");
        return NULL;
    }
    Py_ssize_t nops;
    Op *ops = parse_plan(args[4], &nops);
    if (ops == NULL)
        return NULL;
    Py_buffer view;
    Py_ssize_t pos;
    if (get_buffer(args[0], args[1], &view, &pos) < 0) {
        PyMem_Free(ops);
        return NULL;
    }
    const unsigned char *b = view.buf;
    const Py_ssize_t limit = view.len;
    Out out = {NULL, 0, 0};
    Py_ssize_t count = 0;
    int changed = 0;
    if (out_reserve(&out, limit - pos + 1024) < 0)
        goto error;
    while (pos < limit && b[pos] == 'd') {
        Py_ssize_t fend = frame_end(b, pos, limit);
        if (fend < 0)
            goto error;
        const Py_ssize_t body = pos + 5, blen = fend - body;
        Py_ssize_t hdr = out.len;
        if (out_put(&out, b + pos, 5) < 0) /* its length is set below */
            goto error;
        const unsigned char *line = b + body;
        int plain = blen > 1 && line[blen - 1] == '\n' && line[blen - 2] != '\r'
                    && memchr(line, '\n', (size_t)(blen - 1)) == NULL
                    && memchr(line, '\\', (size_t)blen) == NULL;
        changed = 1;
        if (!plain) {
            PyObject *data = PyBytes_FromStringAndSize((const char *)line, blen);
            if (data == NULL)
                goto error;
            PyObject *res = PyObject_CallOneArg(fallback, data);
            Py_DECREF(data);
            if (res == NULL)
                goto error;
            if (!PyBytes_Check(res)) {
                Py_DECREF(res);
                PyErr_SetString(PyExc_TypeError, "the COPY fallback must return bytes");
                goto error;
            }
            int r = out_put(&out, (const unsigned char *)PyBytes_AS_STRING(res),
                            PyBytes_GET_SIZE(res));
            Py_DECREF(res);
            if (r < 0)
                goto error;
        }
        else {
            const Py_ssize_t lend = fend - 1; /* the newline */
            Py_ssize_t fs = body;
            for (Py_ssize_t c = 0;; c++) {
                if (c >= nops) { /* the rest of the line is not masked */
                    if (out_put(&out, b + fs, fend - fs) < 0)
                        goto error;
                    break;
                }
                const unsigned char *d = memchr(b + fs, delim, (size_t)(lend - fs));
                const Py_ssize_t fe = d ? (Py_ssize_t)(d - b) : lend;
                const Op *op = &ops[c];
                if (op->kind == OP_NONE
                    || (fe - fs == null_n && memcmp(b + fs, null_s, (size_t)null_n) == 0)
                    || (op->kind == OP_SCAN && !prefilter_bytes(b + fs, fe - fs, op->ip))) {
                    if (out_put(&out, b + fs, fe - fs) < 0)
                        goto error;
                }
                else if (copy_field(&out, op, b, fs, fe, null, delim) < 0) {
                    goto error;
                }
                if (fe == lend) {
                    if (out_put(&out, (const unsigned char *)"\n", 1) < 0)
                        goto error;
                    break;
                }
                if (out_put(&out, &delim, 1) < 0)
                    goto error;
                fs = fe + 1;
            }
        }
        Py_ssize_t size = out.len - hdr - 1;
        if ((uint64_t)size > MAX_FRAME) {
            protocol_error("masked COPY row is too long");
            goto error;
        }
        set_be32(out.p + hdr + 1, (uint32_t)size);
        pos = fend;
        count++;
    }
    PyBuffer_Release(&view);
    PyMem_Free(ops);
    return finish(&out, changed, count, pos);
error:
    PyBuffer_Release(&view);
    PyMem_Free(ops);
    PyMem_Free(out.p);
    return NULL;
}

PyDoc_STRVAR(prefilter_doc,
"prefilter(value, ip) -> bool\n\n"
"Whether value detection could find anything in value (bytes); the twin of\n"
"dbsentry.masking.strategies.may_hold_sensitive.");

static PyObject *
prefilter(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "prefilter(value, ip)");
        return NULL;
    }
    int ip = PyObject_IsTrue(args[1]);
    if (ip < 0)
        return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    int r = prefilter_bytes(view.buf, view.len, ip);
    PyBuffer_Release(&view);
    return PyBool_FromLong(r);
}

/* ------------------------------------------------------------------ module */

static PyMethodDef methods[] = {
    {"mask_data_rows", (PyCFunction)(void (*)(void))mask_data_rows, METH_FASTCALL,
     mask_data_rows_doc},
    {"mask_copy_rows", (PyCFunction)(void (*)(void))mask_copy_rows, METH_FASTCALL,
     mask_copy_rows_doc},
    {"prefilter", (PyCFunction)(void (*)(void))prefilter, METH_FASTCALL, prefilter_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "dbsentry.engines.postgres.masking._fastmask",
    "The per-row loops of result masking in C (see dbsentry/engines/postgres/masking/rows.py).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__fastmask(void)
{
    for (int c = 0; c < 256; c++) {
        IS_DIGIT[c] = c >= '0' && c <= '9';
        IS_ALNUM[c] = IS_DIGIT[c] || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        int upper = c >= 'A' && c <= 'Z', letter = upper || (c >= 'a' && c <= 'z');
        int lead = 0;
        for (size_t j = 0; j < sizeof DIGIT_LEADS; j++)
            lead |= c == DIGIT_LEADS[j];
        /* uppercase letters (next to a digit?) and the bytes key prefixes are found from */
        int starts_key = upper || c == 'c' || c == 'x' || c == '_';
        CLS[c] = (uint16_t)((IS_DIGIT[c] ? C_DIGIT : 0) | (IS_DIGIT[c] || lead ? C_COUNT : 0)
                                 | (IS_DIGIT[c] || c >= 0x80 ? C_TAIL : 0)
                                 | (IS_DIGIT[c] || (c >= 0x80 && c < 0xC0) ? C_END : 0)
                                 | (upper ? C_UPPER : 0) | (letter ? C_LETTER : 0)
                                 | (IS_DIGIT[c] || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
                                        ? C_HEX
                                        : 0)
                                 | (starts_key || c == '@' || c == '+' || c == '$' || c == '\\'
                                            || c == '-' || c == ':' || c == '.'
                                        ? C_LOOK
                                        : 0)
                                 | (c == ' ' || c == '(' || c == ')' || c == '.' || c == '+'
                                            || c == '-'
                                        ? C_RUN
                                        : 0));
    }
    PyObject *codec = PyImport_ImportModule("dbsentry.engines.postgres.wire.codec");
    if (codec == NULL)
        return NULL;
    ProtocolError = PyObject_GetAttrString(codec, "ProtocolError");
    Py_DECREF(codec);
    if (ProtocolError == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "CACHE_SIZE", CACHE_SIZE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
