/* parser.h: the request parser of sk_msg, as static inline functions over one state in memory.
 *
 * The grammar is docs/enforcement.md ("Classification"); enforcer/classify.py walks the target
 * and enforcer/params.py reads the parameters with the same machine written in Python, and
 * tests/test_kernel_classify.py holds the two to the same answer on generated requests.  The
 * parser reads no map itself: the caller hands it the tables (character classes, names, target
 * sets, compartments), so it can live in a header (BCC rewrites map calls in the main file only).
 *
 * A message is read in phases, each a program of its own (tail calls) so that each stays within
 * the verifier's limits: the request line (method, target, parameters), the header lines, and
 * the form body of a POST _search (parameters again).  A step is a *run* of bytes of one token
 * taken at once (pb_run: up to 8, SWAR byte classes, the same state changes as the byte path)
 * and the byte that ends it, or one byte.  The state lives in the socket's storage, not in
 * registers, so the verifier sees one state per step (BCC 0.26 cannot relocate bpf_loop
 * callbacks, and a loop whose state the verifier tracks as constants explodes).
 */
#ifndef PARITYBED_PARSER_H
#define PARITYBED_PARSER_H

#include "codes.h"

/* name-table lookup slots (pb_look_step): what a name segment is looked up as */
#define LQ_T 0            /* a type */
#define LQ_M 1            /* a modifier */
#define LQ_P 2            /* a parameter of the current type (PV_ABSENT: of every type but it) */
#define LQ_X 3            /* a page-link, read or history parameter */
#define LQ_C 4            /* 4..7: a parameter of each chain candidate (s->cand) */
#define LQ_PG 15          /* a parameter of every type: last, and looked up only if a lookup as a
                           * parameter of a type found nothing (s->lq_miss) */
#define LQ_TYPED ((1u << LQ_P) | (15u << LQ_C)) /* the slots of lookups as a parameter of a type */
#define LQ_SLOTS 16

struct pb_pstate {
    __u64 k0, k1, k2, k3, k4;  /* shift register of the current token (classify.pack_words) */
    __u64 bw0, bw1, bw2;     /* the agent's fhir.base */
    __u64 tr[3], ts[3];      /* what the request touches to read / to search (type-id bitmaps) */
    __u64 pat[PB_NPAT];      /* the distinct patients it names (FNV-1a 64) */
    __u64 enc;               /* the first encounter it names */
    __u64 claim, ctx;        /* FNV-1a 64 of the claim and launch-context header values */
    __u64 fnv;               /* FNV-1a 64 of the current id (a path id, a value item's id) */
    __u64 cgid;              /* the replica the message is judged for (see pb_sk_msg) */
    __u64 x_idh;             /* a read's id (FNV-1a 64) for the step that names it (A_NAMEID) */
    __u32 wseq;              /* tcp_sock.write_seq when the message was handed to the program */
    __u32 pos, size, head_end, w, len, tlen, blen, end, ilen;
    __u32 cl_val, cl_cur;
    __u16 type_id;           /* the primary type (the search type of a compartment) */
    __u16 cur;               /* the type parameter names are resolved on */
    __u16 pv;                /* the current hop's parameter (name-table value; 0 none) */
    __u16 ityp;              /* a value item's type prefix; an include's source type */
    __u16 ipv;               /* an include's parameter */
    __u16 vtype;             /* the type a bare id in a value names */
    __u16 cand[PB_NARROW];   /* a chain hop's targets, not yet narrowed */
    __u16 cpv[PB_NARROW];    /* the next hop's parameter on each of them */
    __u8 st, fam, form, method, seg, sfl;
    __u8 qin, qmode, nst, pend, p25, pctv, hop, multi, ncand, anym, refm, masks;
    __u8 vmode, vexpl, nseg, isl, icol, iok, idot, iskip;
    __u8 npat, nenc, unknown, paging, getpages;
    __u8 hkind, sub, n_cl, n_claim, n_ctx, n_ct, ct_form, cl_bad, claim_bad, ctx_bad, te, ovr;
    __u8 cont, done, desync, body;
    /* what one step of the request line found, for the actions that follow it (in memory, not
     * registers: the verifier then sees one state after the step's first half, not one per byte) */
    __u32 act;               /* A_*: the steps still to run before the next byte (pb_line_act) */
    __u8 a_term, a_sep, a_pair, a_d;
    /* arguments of the deferred steps of a name segment's end (X_* below) */
    __u16 x_cpv, x_xt, x_mpv, x_mt, x_npv, x_nmt, x_rmt;
    __u8 x_mm, x_nm, x_nid, x_m, x_inter, x_hasmod, x_rm;
    /* name-table lookups queued by a step for the steps after it (pb_look_step): the name they
     * read (a copy of the shift register when queued), the slots queued (LQ_*), and per slot the
     * table, the context and the value found (0: none) */
    __u64 q0, q1, q2, q3, q4;
    __u32 qlen;
    __u16 lq;
    __u16 lq_ctx[LQ_SLOTS];
    __u16 lq_v[LQ_SLOTS];
    __u8 lq_tab[LQ_SLOTS];
    __u8 lq_miss;            /* a lookup as a parameter of a type found nothing: LQ_PG is needed */
    __u8 x_pl;               /* a pair's end waits for its include segment's lookups (pb_line_act) */
    __u8 x_st;               /* the state a name segment ended in */
    __u8 x_hist, x_srch;     /* a path segment is _history, _search */
    __u8 ph;                 /* pb_scan(PH_BOTH): 1 the request line, 0 the header section */
};

/* the tables the parser reads (map values the caller looked up) */
struct pb_env {
    struct pb_ctab *ct;
    struct pb_ntab *nt;
    struct pb_tables *tb;
};

/* ---------------------------------------------------------------- states */
#define ST_METHOD 0
#define ST_BASE 1
#define ST_AFTERBASE 2
#define ST_SEG 3          /* a path segment */
#define ST_QNAME 4        /* a parameter's name */
#define ST_QVAL 5         /* a parameter's value */
#define ST_PCT1 6         /* '%' read: the first hex digit */
#define ST_PCT2 7         /* the second */
#define ST_TSKIP 8        /* the target deviated: skip to its end */
#define ST_VER 9
#define ST_VERLF 10
#define ST_HSTART 11
#define ST_HNAME 12
#define ST_HVAL 13
#define ST_HLF 14
#define ST_HEND 15
#define ST_JUNK 16
#define ST_PEND 17        /* parameters read to their end (a body) */

/* forms of a target */
#define FORM_NONE 0
#define FORM_TYPE 1
#define FORM_SEARCH 2     /* /T/_search */
#define FORM_ID 3
#define FORM_HIST 4
#define FORM_VREAD 5
#define FORM_COMP 6       /* /C/id/T */
#define FORM_SYSTEM 7     /* the base itself */

/* path segment flags (sfl) */
#define SF_LETTERS 1      /* only letters so far */
#define SF_ID 2           /* only id bytes so far */
#define SF_DOTS 4         /* only '.' so far */
#define SF_OP 8           /* the segment is an operation ($...) */
#define SF_OPOK 16        /* ... of operation-name bytes only */

/* what parameters are read for (qmode) */
#define QM_SEARCH 0
#define QM_READ 1
#define QM_HISTORY 2
#define QM_SYSTEM 3

/* name segment states (nst), as enforcer/params.py */
#define NS_FIRST 0
#define NS_HNAME 1
#define NS_HMOD 2
#define NS_HAS_T 3
#define NS_HAS_R 4
#define NS_HAS_NEXT 5
#define NS_HAS_MOD 6
#define NS_HAS_KEY 7      /* (not a state) the segment "_has" where a has-name starts */

/* value modes (vmode) */
#define VM_SKIP 0
#define VM_INCLUDE 1
#define VM_REVINCLUDE 2
#define VM_CONTAINED 3
#define VM_REFS 4
#define VM_IDS 5

#define W_GET 0x474554ULL
#define W_POST 0x504f5354ULL
#define W_PUT 0x505554ULL
#define W_DELETE 0x44454c455445ULL
#define W_HEAD 0x48454144ULL
#define W_HTTP11 0x485454502f312e31ULL
#define W_HISTORY 0x5f686973746f7279ULL /* "_history" */
#define W_SEARCH 0x5f736561726368ULL    /* "_search" */
#define W_GRAPHQL 0x6772617068716cULL   /* "graphql" */
#define W_HAS 0x5f686173ULL             /* "_has" */
#define W_FALSE 0x66616c7365ULL         /* "false" */
/* "application/x-www-form-urlencoded" (33 bytes) as classify.pack_words */
#define W_FORM0 0x6c656e636f646564ULL
#define W_FORM1 0x2d666f726d2d7572ULL
#define W_FORM2 0x6f6e2f782d777777ULL
#define W_FORM3 0x70706c6963617469ULL
#define W_FORM4 0x61ULL
#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

#define SH1(c) do { s->k0 = (s->k0 << 8) | (c); } while (0)
#define SH2(c) do { s->k1 = (s->k1 << 8) | (s->k0 >> 56); SH1(c); } while (0)
#define SH3(c) do { s->k2 = (s->k2 << 8) | (s->k1 >> 56); SH2(c); } while (0)
#define SH5(c) do { s->k4 = (s->k4 << 8) | (s->k3 >> 56); s->k3 = (s->k3 << 8) | (s->k2 >> 56); SH3(c); } while (0)
#define CLR() do { s->k0 = 0; s->k1 = 0; s->k2 = 0; s->k3 = 0; s->k4 = 0; s->len = 0; } while (0)

/* The first deviation of the target or its parameters: its shape; the rest of the target is
 * skipped (a body's parameters: to the body's end). */
#define DEV(_fam) do { if (!s->fam) s->fam = (_fam); s->st = ST_TSKIP; } while (0)
/* a field read from memory at this point: the verifier then knows nothing of its value from earlier
 * branches, so paths that differ only in what they learned of it are one state (pruned) */
#define RD(x) (*(volatile typeof(x) *)&(x))
#define PEND(_fam) do { if (!s->pend) s->pend = (_fam); } while (0)

/* steps of the request line and the parameters run after the byte that calls for them (s->act) */
#define A_TERM 1          /* a path segment ended (s->a_term: '/', '?', ' ') */
#define A_SEP 2           /* a name segment ended (s->a_sep: ':', '.', '=') */
#define A_NARROW 4
#define A_CHAIN 8
#define A_MOD 16
#define A_NAMES 32
#define A_VALUE 64        /* a decoded value byte (s->a_d) */
#define A_PAIR 128        /* a pair ended (s->a_pair: 1 '&', 2 with the target or the body) */
#define A_TEND 256        /* the target ended */
#define A_NAMEID 512      /* the id of a read names a patient or an encounter (s->x_idh) */
#define A_QUERY 1024      /* '?' ended the path: the query starts (pb_path_query) */
#define A_QSYS 2048       /* '?' after the base: its query starts */
#define A_LOOK 4096       /* a queued name-table lookup (pb_look_step) */
#define A_TERM0 8192      /* a path segment ended: its lookups first (pb_seg_look) */
#define A_SEP0 16384      /* a name segment ended: its lookups first (pb_name_seg_look) */
#define A_INC 32768       /* an include's segment ended, its lookups done (pb_inc_seg) */
#define A_ITYP 65536      /* a reference's type ended, its lookup done */

#define ACT_TERM(c) do { s->act |= A_TERM0; s->a_term = (c); } while (0)
#define ACT_SEP(c) do { s->act |= A_SEP0; s->a_sep = (c); } while (0)
#define ACT_PAIR(n) do { s->act |= A_PAIR; s->a_pair = (n); } while (0)

/* Deferred steps of a name segment's end: pb_name_seg_end records them (bits of s->act with their
 * arguments in the state) and pb_line_act runs them one per loop iteration, before the next byte,
 * in the order params.py calls them (narrowed, then chain or modifier, then names).  So the
 * verifier follows each of them on its own, not every combination of them within one step. */
#define X_CHAIN(_pv, _xt) do { s->act |= A_CHAIN; s->x_cpv = (_pv); s->x_xt = (_xt); } while (0)
#define X_MOD(_pv, _mod, _mt) do { s->act |= A_MOD; s->x_mpv = (_pv); s->x_mm = (_mod); s->x_mt = (_mt); } while (0)
#define X_NAMES(_pv, _mod, _mt, _id) \
    do { s->act |= A_NAMES; s->x_npv = (_pv); s->x_nm = (_mod); s->x_nmt = (_mt); s->x_nid = (_id); } while (0)
#define X_NARROW(_m, _inter, _hasmod, _mod, _mt) \
    do { s->act |= A_NARROW; s->x_m = (_m); s->x_inter = (_inter); s->x_hasmod = (_hasmod); s->x_rm = (_mod); \
         s->x_rmt = (_mt); } while (0)

/* ---------------------------------------------------------------- tables */

/* 1 when x is 0, else 0, computed without a branch: the verifier follows one path through it,
 * where a comparison would give it one path per outcome (and the outcomes multiply along a step).
 * The asm hides the idiom from the compiler, which would turn it back into a comparison. */
static __always_inline u64 pb_is0(u64 x)
{
    u64 t = x | (0 - x);
    asm volatile("" : "+r"(t));
    return (t >> 63) ^ 1;
}

/* a name's value in the name table (0: not there); see struct pb_ntab.  The probes stop at the
 * name or at an empty slot: names are placed by linear probing, never removed, so a name is
 * never beyond the first empty slot of its probes.  Most lookups read one entry (the table is a
 * quarter full) instead of all four; a probe's table, context, length and words are compared in
 * full, so a collision never matches. */
static __always_inline u16 pb_name_find(struct pb_ntab *nt, u8 tab, u16 ctx, u32 len, u64 w0, u64 w1, u64 w2,
                                        u64 w3, u64 w4)
{
    u64 key = ((u64)ctx << 16) | ((u64)tab << 8) | len;
    u64 h = w0 ^ (w1 * NT_P1) ^ (w2 * NT_P2) ^ (w3 * NT_P3) ^ (w4 * NT_P4) ^ (key * NT_P5);
    u32 slot = (h * nt->mult) >> (64 - PB_NT_BITS);
    u16 val = 0;
#pragma unroll
    for (int p = 0; p < PB_NT_PROBES; p++) {
        struct pb_name *e = &nt->e[(slot + p) & (PB_NT_SIZE - 1)];
        u64 ek = ((u64)e->ctx << 16) | ((u64)e->tab << 8) | e->len;
        if (!e->tab)
            break; /* an empty slot */
        u64 diff = (e->w[0] ^ w0) | (e->w[1] ^ w1) | (e->w[2] ^ w2) | (e->w[3] ^ w3) | (e->w[4] ^ w4) | (ek ^ key);
        if (!diff) {
            val = e->val;
            break;
        }
    }
    return val;
}

/* The name in the shift register is looked up as what the grammar may need it as, before the
 * grammar reads it: the step that ends a segment queues its lookups (pb_look), the next loop
 * iterations run them one each (pb_look_step, the program's one lookup site), and the step after
 * them reads the values (s->lq_v).  One site, entered from the loop's head, keeps the verifier's
 * cost of a lookup independent of how many places in the grammar need one. */
static __always_inline void pb_look_name(struct pb_pstate *s)
{
    s->q0 = s->k0;
    s->q1 = s->k1;
    s->q2 = s->k2;
    s->q3 = s->k3;
    s->q4 = s->k4;
    s->qlen = s->len;
    s->lq = 0;
    s->lq_miss = 0;
#pragma unroll
    for (int i = 0; i < LQ_SLOTS; i++)
        s->lq_v[i] = 0;
}

static __always_inline void pb_look(struct pb_pstate *s, u32 slot, u8 tab, u16 ctx)
{
    slot &= LQ_SLOTS - 1;
    s->lq |= 1 << slot;
    s->lq_tab[slot] = tab;
    s->lq_ctx[slot] = ctx;
    s->act |= A_LOOK;
}

/* the lowest queued lookup */
static __always_inline void pb_look_step(struct pb_pstate *s, struct pb_env *e)
{
    u32 q = RD(s->lq) & 0xffff;
    if (!q) {
        s->act &= ~A_LOOK;
        return;
    }
    u32 below = (q & (0 - q)) - 1; /* the bits under the lowest queued slot: their count is its index */
    below = below - ((below >> 1) & 0x5555);
    below = (below & 0x3333) + ((below >> 2) & 0x3333);
    below = (below + (below >> 4)) & 0x0f0f;
    u32 i = (below + (below >> 8)) & (LQ_SLOTS - 1);
    u32 len = RD(s->qlen);
    u16 v = 0;
    if (len <= PB_NAME_MAX && (i != LQ_PG || RD(s->lq_miss)))
        v = pb_name_find(e->nt, s->lq_tab[i], s->lq_ctx[i], len, s->q0, s->q1, s->q2, s->q3, s->q4);
    s->lq_v[i] = v;
    u8 miss = RD(s->lq_miss) | (u8)(pb_is0(v) & (LQ_TYPED >> i) & 1);
    s->lq_miss = miss;
    q &= q - 1;
    if (q == (1u << LQ_PG) && !miss)
        q = 0; /* only the every-type lookup is left, and no lookup as a parameter of a type missed */
    s->lq = q;
    if (!q)
        s->act &= ~A_LOOK;
}

/* a parameter looked up in slot `slot` for a type, with the every-type lookup (LQ_PG) behind it */
static __always_inline u16 pb_look_param(struct pb_pstate *s, u32 slot)
{
    u16 v = s->lq_v[slot & (LQ_SLOTS - 1)];
    if (v == PV_ABSENT)
        return 0; /* a parameter of every type but this one */
    return v ? v : s->lq_v[LQ_PG];
}

/* the name's lookups as a parameter of type t */
static __always_inline void pb_look_params(struct pb_pstate *s, u32 slot, u16 t)
{
    pb_look(s, slot, NT_PARAM, t);
    pb_look(s, LQ_PG, NT_PARAM, 0);
}

static __always_inline struct pb_tset *pb_tset_of(struct pb_env *e, u16 pv)
{
    return &e->tb->tset[PV_TSET(pv) & (PB_TSETS - 1)];
}

static __always_inline int pb_bit(u64 *bits, u16 t)
{
    u32 w = (t >> 6) & 3;
    return w < PB_TW && ((bits[w] >> (t & 63)) & 1);
}

static __always_inline void pb_touch_search(struct pb_pstate *s, u16 t)
{
    u32 w = (t >> 6) & 3;
    if (w < PB_TW)
        s->ts[w] |= 1ULL << (t & 63);
}

static __always_inline void pb_touch_read(struct pb_pstate *s, u16 t)
{
    u32 w = (t >> 6) & 3;
    if (w < PB_TW)
        s->tr[w] |= 1ULL << (t & 63);
}

/* a hop through the types of a target set: searched; a patient or an encounter among them is
 * named by its data, not by id */
static __always_inline void pb_touch_set(struct pb_pstate *s, struct pb_env *e, u64 *bits)
{
    s->ts[0] |= bits[0];
    s->ts[1] |= bits[1];
    s->ts[2] |= bits[2];
    if (pb_bit(bits, e->tb->patient) || pb_bit(bits, e->tb->encounter))
        s->unknown = 1;
}

static __always_inline int pb_modok(struct pb_env *e, u16 pv, u8 mod)
{
    u16 m = e->tb->modok[PV_KIND(pv) & 31];
    return mod >= 1 && mod <= 15 && ((m >> mod) & 1);
}

/* ---------------------------------------------------------------- naming */

static __always_inline void pb_name_patient(struct pb_pstate *s, u64 h)
{
    u8 n = s->npat;
#pragma unroll
    for (int i = 0; i < PB_NPAT; i++)
        if (i < n && s->pat[i] == h)
            return;
    if (n < PB_NPAT)
        s->pat[n & (PB_NPAT - 1)] = h;
    s->npat = n < PB_NPAT + 1 ? n + 1 : n; /* PB_NPAT + 1: more than PB_NPAT */
}

static __always_inline void pb_name_encounter(struct pb_pstate *s, u64 h)
{
    if (!s->nenc) {
        s->enc = h;
        s->nenc = 1;
    } else if (s->enc != h) {
        s->nenc = 2; /* several */
    }
}

/* the id just read (s->fnv, s->ilen bytes, s->iok, s->idot) is valid */
static __always_inline int pb_id_ok(struct pb_pstate *s)
{
    return s->ilen >= 1 && s->ilen <= PB_ID_MAX && s->iok && !(s->idot && s->ilen <= 2);
}

/* ---------------------------------------------------------------- the path */

static __always_inline void pb_seg_start(struct pb_pstate *s)
{
    s->st = ST_SEG;
    CLR();
    s->sfl = SF_LETTERS | SF_ID | SF_DOTS;
    s->fnv = FNV_OFFSET;
    s->ilen = 0;
    s->iok = 1;
    s->idot = 1;
}

/* the query of the current form starts */
/* a parameter starts (the query's first, or the next after '&'): its name's first hop */
static __always_inline void pb_param_start(struct pb_pstate *s)
{
    s->st = ST_QNAME;
    s->qin = 1;
    s->nst = NS_FIRST;
    s->pend = 0;
    s->p25 = 0;
    s->hop = 0;
    s->multi = 0;
    s->ncand = 0;
    s->masks = 0;
    s->pv = 0;
    s->cur = s->type_id;
    s->vmode = VM_SKIP;
    s->vexpl = 0;
    CLR();
}

static __always_inline void pb_query_start(struct pb_pstate *s, u8 mode)
{
    s->qmode = mode;
    s->paging = 1; /* the base's query: every name a page-link parameter so far */
    s->getpages = 0;
    pb_param_start(s);
}

/* the target names a patient or an encounter by id: the segment just read */
static __always_inline void pb_name_target(struct pb_pstate *s, struct pb_env *e, u16 t, u64 h)
{
    if (t == e->tb->patient)
        pb_name_patient(s, h);
    else if (t == e->tb->encounter)
        pb_name_encounter(s, h);
}

/* the (method, form) pair a request may have; a query where the form takes one */
static __always_inline int pb_form_ok(u8 method, u8 form)
{
    if (method == MT_GET || method == MT_HEAD)
        return form != FORM_NONE && form != FORM_SYSTEM;
    if (method == MT_POST)
        return form == FORM_TYPE || form == FORM_SEARCH;
    return form == FORM_ID; /* PUT, DELETE */
}

/* '?' after the path: the method/form is checked, then the query's mode */
static __always_inline void pb_path_query(struct pb_pstate *s)
{
    if (!pb_form_ok(RD(s->method), RD(s->form))) {
        DEV(S_MALFORMED);
    } else if (RD(s->method) == MT_PUT || RD(s->method) == MT_DELETE || (RD(s->method) == MT_POST && RD(s->form) == FORM_TYPE)) {
        DEV(S_PARAM);
    } else {
        u8 f = RD(s->form);
        pb_query_start(s, (f == FORM_ID || f == FORM_VREAD) ? QM_READ : f == FORM_HIST ? QM_HISTORY : QM_SEARCH);
    }
}

/* a path segment ended with term ('/', '?' or ' '): what it was (classify._Walk.target) */
static __always_inline void pb_seg_look(struct pb_pstate *s)
{
    pb_look_name(s);
    if (s->len && (s->sfl & SF_LETTERS) && (s->seg == 0 || s->seg == 2))
        pb_look(s, LQ_T, NT_TYPE, 0); /* the segment as a type (its first byte is checked per case) */
    s->act |= A_TERM;
}

static __always_inline void pb_seg_end(struct pb_pstate *s, struct pb_env *e, u8 term)
{
    s->x_hist = s->len == 8 && s->k0 == W_HISTORY;
    s->x_srch = s->len == 7 && s->k0 == W_SEARCH;
    asm volatile("" ::: "memory");
    if (RD(s->sfl) & SF_OP) { /* $name: an operation (the rest of the target is not looked at) */
        DEV(!(RD(s->sfl) & SF_OPOK) || RD(s->len) == 0 ? S_MALFORMED : (RD(s->len) == 7 && s->k0 == W_GRAPHQL) ? S_GRAPHQL : S_OPERATION);
        return;
    }
    if (RD(s->seg) == 0) {
        if (RD(s->len) == 0) { /* the base with a trailing slash: the base itself */
            if (RD(s->a_term) == '/') {
                DEV(S_MALFORMED);
            } else if (s->method == MT_POST) {
                DEV(S_BUNDLE);
            } else {
                s->form = FORM_SYSTEM;
                if (RD(s->a_term) == '?')
                    s->act |= A_QSYS; /* the base's query starts: the next step */
                else
                    DEV(S_TYPE_PARAM);
            }
            return;
        }
        if (RD(s->x_hist) || RD(s->x_srch)) {
            DEV((s->method == MT_POST && RD(s->x_srch)) ? S_BUNDLE : S_TYPE_PARAM);
            return;
        }
        if (!(s->sub & 1)) { /* the first byte was not a letter */
            DEV(S_MALFORMED);
            return;
        }
        u16 t = RD(s->lq_v[LQ_T]);
        if (!t) {
            DEV(S_UNKNOWN_TYPE);
            return;
        }
        s->type_id = t;
        s->cur = t;
        s->form = FORM_TYPE;
    } else if (RD(s->seg) == 1) {
        if (RD(s->x_hist) || RD(s->x_srch)) {
            s->form = RD(s->x_srch) ? FORM_SEARCH : FORM_HIST;
            if (RD(s->a_term) == '/') {
                DEV(S_MALFORMED);
                return;
            }
        } else if (pb_id_ok(s)) {
            s->form = FORM_ID;
            s->x_idh = s->fnv; /* the patient or encounter it names: the next step */
            s->act |= A_NAMEID;
        } else {
            DEV(S_MALFORMED);
            return;
        }
    } else if (RD(s->seg) == 2) {
        if (RD(s->x_hist)) {
            s->form = FORM_HIST;
        } else if (RD(s->len) == 1 && s->k0 == '*') {
            DEV(S_COMPARTMENT);
            return;
        } else if (RD(s->len) == 0 || !(s->sub & 1)) {
            DEV(S_MALFORMED);
            return;
        } else {
            u16 m = RD(s->lq_v[LQ_T]);
            u16 owner = s->type_id;
            if (!m || !pb_bit(e->tb->comp + (owner < PB_TYPES ? owner : 0) * PB_TW, m) || RD(s->a_term) == '/') {
                DEV(S_COMPARTMENT);
                return;
            }
            s->type_id = m; /* a search of the member type, in the owner's compartment */
            s->cur = m;
            s->form = FORM_COMP;
        }
    } else if (RD(s->seg) == 3 && s->form == FORM_HIST) {
        if (!pb_id_ok(s) || RD(s->a_term) == '/') {
            DEV(S_MALFORMED);
            return;
        }
        s->form = FORM_VREAD;
    } else {
        DEV(S_MALFORMED);
        return;
    }
    if (RD(s->a_term) == '/') {
        s->seg = RD(s->seg) + 1;
        pb_seg_start(s);
        s->sub = 0;
    } else if (RD(s->a_term) == '?') {
        s->act |= A_QUERY; /* the query starts: the next step */
    } else if (!pb_form_ok(RD(s->method), RD(s->form))) {
        DEV(S_MALFORMED);
    }
}

/* one byte of a path segment, not '/', '?', ' ' */
static __always_inline void pb_seg_byte(struct pb_pstate *s, u8 c, u32 f)
{
    if (c == '%') {
        DEV(S_ENCODED);
        return;
    }
    if (s->len == 0 && s->ilen == 0 && !(s->sfl & SF_OP)) {
        if (c == '$') {
            s->sfl |= SF_OP | SF_OPOK;
            return;
        }
        s->sub = (f & C_ALPHA) ? 1 : 0; /* whether the first byte is a letter */
    }
    if (s->sfl & SF_OP) {
        if (!(f & C_OP))
            s->sfl &= ~SF_OPOK;
        SH1((f & C_UPPER) ? (c | 0x20) : c);
        s->len++;
        return;
    }
    if (!(f & C_ALPHA))
        s->sfl &= ~SF_LETTERS;
    if (!(f & C_ID))
        s->iok = 0;
    if (c != '.')
        s->idot = 0;
    s->fnv = (s->fnv ^ c) * FNV_PRIME;
    s->ilen++;
    SH5(c);
    s->len++;
}

/* ---------------------------------------------------------------- parameters (enforcer/params.py) */

/* a hop through reference parameter pv, narrowed to type xt (0: its targets) */
static __always_inline void pb_chain_from(struct pb_pstate *s, struct pb_env *e, u16 pv, u16 xt)
{
    if (!pv || PV_KIND(pv) != P_REFERENCE) {
        PEND(S_PARAM);
        return;
    }
    struct pb_tset *ts = pb_tset_of(e, pv);
    if (xt && !pb_bit(ts->bits, xt)) {
        PEND(S_PARAM);
        return;
    }
    s->hop++;
    s->pv = 0;
    if (xt || ts->n == 1) {
        u16 t = xt ? xt : ts->m[0];
        pb_touch_search(s, t);
        if (t == e->tb->patient || t == e->tb->encounter)
            s->unknown = 1;
        s->cur = t;
    } else if (ts->n == 0 || ts->n > PB_NARROW) {
        pb_touch_set(s, e, ts->bits);
        s->multi = 1;
    } else {
        s->ncand = ts->n;
#pragma unroll
        for (int i = 0; i < PB_NARROW; i++)
            s->cand[i] = ts->m[i];
    }
}

/* a modifier of an ordinary parameter at its last hop; mt: the modifier as a type (0: not) */
static __always_inline void pb_modifier(struct pb_pstate *s, struct pb_env *e, u16 pv, u8 mod, u16 mt)
{
    if (mt) {
        if (PV_KIND(pv) != P_REFERENCE || !pb_bit(pb_tset_of(e, pv)->bits, mt))
            PEND(S_PARAM);
        return;
    }
    if (!mod || mod == MOD_ITERATE || mod == MOD_RECURSE || !pb_modok(e, pv, mod)) {
        PEND(S_PARAM);
        return;
    }
    if (mod == MOD_IN || mod == MOD_NOT_IN)
        pb_touch_read(s, e->tb->valueset);
}

/* the targets (candidates in mask s->x_m) that have the next hop's parameter (as a server
 * searches); a deferred step (A_NARROW) */
static __always_inline void pb_narrowed(struct pb_pstate *s, struct pb_env *e)
{
    u8 m = s->x_m, intermediate = s->x_inter, hasmod = s->x_hasmod;
    u8 n = 0;
    u16 one = 0, onepv = 0;
#pragma unroll
    for (int i = 0; i < PB_NARROW; i++) {
        if ((m >> i) & 1) {
            u16 c = s->cand[i];
            pb_touch_search(s, c);
            if (c == e->tb->patient || c == e->tb->encounter)
                s->unknown = 1;
            n++;
            one = c;
            onepv = s->cpv[i];
        }
    }
    s->ncand = 0;
    if (n == 0) {
        PEND(S_PARAM);
        return;
    }
    if (n > 1) {
        if (intermediate)
            PEND(S_CHAINED);
        return;
    }
    s->cur = one;
    u16 mt = s->x_rmt;
    if (intermediate)
        X_CHAIN(onepv, hasmod ? (mt ? mt : 0xffff) : 0); /* a hop's modifier names its type */
    else if (hasmod)
        X_MOD(onepv, s->x_rm, mt);
}

/* a bare or typed id in a value names a patient or an encounter */
static __always_inline void pb_names_mode(struct pb_pstate *s, struct pb_env *e, u16 pv, u8 mod, u16 mt,
                                          u8 is_id)
{
    u16 pt = e->tb->patient, et = e->tb->encounter;
    if (is_id && (s->type_id == pt || s->type_id == et)) {
        if (mod || mt) {
            s->unknown = 1; /* _id:not=... names every other one */
        } else {
            s->vmode = VM_IDS;
            s->vtype = s->type_id;
        }
        return;
    }
    if (PV_KIND(pv) != P_REFERENCE || mod == MOD_MISSING)
        return;
    struct pb_tset *ts = pb_tset_of(e, pv);
    u8 np = pb_bit(ts->bits, pt), ne = pb_bit(ts->bits, et);
    if (!np && !ne)
        return;
    if (mod == MOD_IDENTIFIER || mod == MOD_ABOVE || mod == MOD_BELOW) {
        s->unknown = 1;
        return;
    }
    if (mod || (mt && mt != pt && mt != et))
        return; /* another modifier (rejected already) or narrowed to another type: names neither */
    s->vmode = VM_REFS;
    s->vtype = mt ? mt : np ? pt : et;
    s->vexpl = mt != 0;
}

/* the next hop's parameter on each candidate target of a chain (s->cpv) and which of them have it
 * as an ordinary (s->anym) or a reference (s->refm) parameter */
static __always_inline void pb_cand_params(struct pb_pstate *s, struct pb_env *e)
{
    s->anym = 0;
    s->refm = 0;
#pragma clang loop unroll(disable)
    for (u32 i = 0; i < PB_NARROW; i++) {
        asm volatile("" ::: "memory");
        u16 v = i < s->ncand ? pb_look_param(s, LQ_C + i) : 0;
        u8 k = PV_KIND(v);
        s->cpv[i & (PB_NARROW - 1)] = v;
        s->anym |= (u8)(P_ORDINARY(k) << i);
        s->refm |= (u8)((k == P_REFERENCE) << i);
    }
}

/* a name segment ended: the state it ended in, and the names it may be, looked up first */
static __always_inline void pb_name_seg_look(struct pb_pstate *s)
{
    u32 len = s->len;
    if (len == 0) {
        DEV(S_MALFORMED);
        return;
    }
    u8 st = s->nst, has = len == 4 && s->k0 == W_HAS;
    if ((st == NS_FIRST || st == NS_HAS_NEXT) && has)
        st = NS_HAS_KEY; /* "_has" opens a has-name, or a nested one */
    s->x_st = st;
    pb_look_name(s);
    asm volatile("" ::: "memory");
    if (RD(s->x_st) == NS_HAS_T || RD(s->x_st) == NS_HAS_MOD || RD(s->x_st) == NS_HMOD) {
        pb_look(s, LQ_T, NT_TYPE, 0);
        pb_look(s, LQ_M, NT_MOD, 0);
    }
    asm volatile("" ::: "memory");
    if (RD(s->x_st) == NS_HAS_R || RD(s->x_st) == NS_HAS_NEXT || RD(s->x_st) == NS_HNAME || (RD(s->x_st) == NS_FIRST && RD(s->qmode) == QM_SEARCH))
        pb_look_params(s, LQ_P, RD(s->x_st) == NS_FIRST ? s->type_id : s->cur);
    asm volatile("" ::: "memory");
    if (RD(s->x_st) == NS_FIRST && RD(s->qmode) != QM_SEARCH) /* the base's page links, a read's or a history's parameters */
        pb_look(s, LQ_X, NT_PARAM, RD(s->qmode) == QM_SYSTEM ? 0xffff : RD(s->qmode) == QM_READ ? 0xfffe : 0xfffd);
    asm volatile("" ::: "memory");
    if (RD(s->x_st) == NS_HNAME) { /* a chain's next hop on each candidate target */
#pragma unroll
        for (int i = 0; i < PB_NARROW; i++)
            if (i < RD(s->ncand))
                pb_look_params(s, LQ_C + i, s->cand[i]);
    }
    s->act |= A_SEP;
}

/* the segment in the register ended with sep (':', '.', '='): params.Params._segment_end */
static __always_inline void pb_name_seg_end(struct pb_pstate *s, struct pb_env *e, u8 sep)
{
    u32 len = s->len;
    if (RD(s->x_st) == NS_HAS_KEY || RD(s->x_st) == NS_HAS_T || RD(s->x_st) == NS_HAS_R) { /* structure of a has-name */
        if (RD(s->a_sep) == '.') {
            DEV(S_HAS);
            return;
        }
        if (RD(s->a_sep) == '=') {
            DEV(S_MALFORMED);
            return;
        }
    }
    if (RD(s->x_st) == NS_HAS_KEY) {
        s->nst = NS_HAS_T;
        return;
    }
    if (RD(s->x_st) == NS_HAS_T) {
        if (!s->pend) {
            u16 t = s->lq_v[LQ_T];
            if (!t) {
                PEND(S_HAS);
            } else {
                pb_touch_search(s, t);
                s->cur = t;
            }
        }
        s->nst = NS_HAS_R;
        return;
    }
    if (RD(s->x_st) == NS_HAS_R) {
        if (!s->pend && PV_KIND(pb_look_param(s, LQ_P)) != P_REFERENCE)
            PEND(S_PARAM);
        s->nst = NS_HAS_NEXT;
        return;
    }
    if (RD(s->x_st) == NS_HAS_NEXT) {
        if (RD(s->a_sep) == '.') {
            DEV(S_HAS);
            return;
        }
        if (!s->pend) {
            u16 v = pb_look_param(s, LQ_P);
            s->pv = v;
            if (!P_ORDINARY(PV_KIND(v)))
                PEND(S_PARAM);
        }
        s->nst = NS_HAS_MOD;
        s->vmode = VM_SKIP;
        return;
    }
    if (RD(s->x_st) == NS_HAS_MOD) {
        if (RD(s->a_sep) == '.') {
            DEV(S_HAS);
            return;
        }
        if (RD(s->a_sep) == ':') {
            DEV(S_MALFORMED);
            return;
        }
        if (!s->pend) {
            u8 mod = (u8)s->lq_v[LQ_M];
            X_MOD(s->pv, mod, mod ? 0 : s->lq_v[LQ_T]);
        }
        s->vmode = VM_SKIP;
        return;
    }
    /* a hop-mode name: FIRST, HNAME, HMOD */
    if (RD(s->x_st) == NS_HMOD && RD(s->a_sep) == ':') {
        DEV(S_MALFORMED); /* a second modifier on one hop */
        return;
    }
    s->nst = RD(s->a_sep) == ':' ? NS_HMOD : NS_HNAME;
    if (RD(s->x_st) == NS_FIRST) {
        if (RD(s->qmode) == QM_SYSTEM) {
            u16 v = s->lq_v[LQ_X];
            if (RD(s->a_sep) != '=' || !v)
                s->paging = 0;
            if (RD(s->a_sep) == '=' && v == 2)
                s->getpages = 1;
            return;
        }
        if (RD(s->qmode) != QM_SEARCH) {
            if (RD(s->a_sep) != '=' || !s->lq_v[LQ_X])
                PEND(S_PARAM);
            return;
        }
        u16 v = pb_look_param(s, LQ_P);
        u8 k = PV_KIND(v);
        s->pv = v;
        s->sub = len == 3 && s->k0 == 0x5f6964; /* "_id" */
        if (!v) {
            PEND(S_PARAM);
        } else if (k == P_INCLUDE || k == P_REVINCLUDE) {
            if (RD(s->a_sep) == '.')
                PEND(S_INCLUDE);
            else if (RD(s->a_sep) == '=')
                s->vmode = k == P_INCLUDE ? VM_INCLUDE : VM_REVINCLUDE;
        } else if (k == P_TYPE) {
            PEND(S_TYPE_PARAM);
        } else if (k == P_OPAQUE || k == P_CONTAINED || k == P_RESULT) {
            if (RD(s->a_sep) != '=')
                PEND(S_PARAM);
            else if (k == P_OPAQUE)
                PEND(S_SPECIAL);
            else if (k == P_CONTAINED)
                s->vmode = VM_CONTAINED;
        } else if (RD(s->a_sep) == '.') {
            X_CHAIN(v, 0);
        } else if (RD(s->a_sep) == '=') {
            X_NAMES(v, 0, 0, s->sub);
        }
        return;
    }
    if (s->pend || RD(s->qmode) != QM_SEARCH)
        return;
    if (RD(s->x_st) == NS_HMOD) {
        u8 mod = (u8)s->lq_v[LQ_M];
        u16 mt = mod ? 0 : s->lq_v[LQ_T];
        u16 pv = s->pv;
        if (s->hop == 0) {
            u8 k = PV_KIND(pv);
            if (k == P_INCLUDE || k == P_REVINCLUDE) {
                if (RD(s->a_sep) == '.' || (mod != MOD_ITERATE && mod != MOD_RECURSE))
                    PEND(S_INCLUDE);
                else
                    s->vmode = k == P_INCLUDE ? VM_INCLUDE : VM_REVINCLUDE;
                return;
            }
            if (!P_ORDINARY(k))
                return;
            if (RD(s->a_sep) == '.') {
                X_CHAIN(pv, mt ? mt : 0xffff); /* a hop's modifier names its type */
            } else {
                X_MOD(pv, mod, mt);
                X_NAMES(pv, mod, mt, s->sub);
            }
            return;
        }
        if (s->multi) {
            if (RD(s->a_sep) == '.')
                PEND(S_CHAINED);
            return;
        }
        if (s->masks) {
            s->masks = 0;
            X_NARROW(RD(s->a_sep) == '.' ? s->refm : s->anym, RD(s->a_sep) == '.', 1, mod, mt);
            return;
        }
        if (RD(s->a_sep) == '.')
            X_CHAIN(pv, mt ? mt : 0xffff);
        else if (pv)
            X_MOD(pv, mod, mt);
        return;
    }
    /* NS_HNAME: the name of a hop after the first */
    if (s->multi) {
        if (RD(s->a_sep) == '.')
            PEND(S_CHAINED);
        return;
    }
    if (s->ncand) {
        pb_cand_params(s, e);
        asm volatile("" ::: "memory");
        if (RD(s->a_sep) == ':') { /* intermediate or last: the modifier's end tells */
            s->masks = 1;
            return;
        }
        X_NARROW(RD(s->a_sep) == '.' ? s->refm : s->anym, RD(s->a_sep) == '.', 0, 0, 0);
        return;
    }
    u16 v = pb_look_param(s, LQ_P);
    s->pv = v;
    if (RD(s->a_sep) == '.')
        X_CHAIN(v, 0);
    else if (!P_ORDINARY(PV_KIND(v)))
        PEND(S_PARAM);
}

/* ---------------------------------------------------------------- values */

static __always_inline void pb_item_start(struct pb_pstate *s)
{
    CLR();
    s->isl = 0;
    s->icol = 0;
    s->iskip = 0; /* bytes in the item */
    s->ityp = 0;
    s->fnv = FNV_OFFSET;
    s->ilen = 0;
    s->iok = 1;
    s->idot = 1;
}

/* a value item (between ',') ended: the patient or encounter it names (params._item_end) */
static __always_inline void pb_item_end(struct pb_pstate *s, struct pb_env *e)
{
    if (!s->iskip)
        return;
    u16 pt = e->tb->patient;
    if (s->vmode == VM_IDS) {
        if (!pb_id_ok(s))
            s->unknown = 1;
        else if (s->vtype == pt)
            pb_name_patient(s, s->fnv);
        else
            pb_name_encounter(s, s->fnv);
        return;
    }
    if (s->icol || s->isl > 1) {
        s->unknown = 1;
        return;
    }
    u16 t = s->isl ? s->ityp : s->vtype;
    if (s->isl && s->vexpl && t != s->vtype) {
        s->unknown = 1;
        return;
    }
    if (t != pt && t != e->tb->encounter)
        return;
    if (!pb_id_ok(s))
        s->unknown = 1;
    else if (t == pt)
        pb_name_patient(s, s->fnv);
    else
        pb_name_encounter(s, s->fnv);
}

/* an include's segment ended (':' or the value's end): its lookups first */
static __always_inline void pb_inc_look(struct pb_pstate *s)
{
    u8 n = s->nseg;
    pb_look_name(s);
    if (n == 0 || n == 2)
        pb_look(s, LQ_T, NT_TYPE, 0);
    else if (n == 1 && s->ityp)
        pb_look_params(s, LQ_P, s->ityp);
    s->act |= A_INC;
}

/* ... then what it was (a deferred step, A_INC) */
static __always_inline void pb_inc_seg(struct pb_pstate *s, struct pb_env *e)
{
    u8 n = s->nseg;
    u16 v = 0;
    if (!s->iok || s->len > PB_NAME_MAX)
        v = 0;
    else if (n == 0 || n == 2)
        v = s->lq_v[LQ_T];
    else if (n == 1)
        v = s->ityp ? pb_look_param(s, LQ_P) : 0;
    if (n == 0)
        s->ityp = v;
    else if (n == 1)
        s->ipv = v;
    else if (n == 2)
        s->vtype = v;
    s->nseg = n < 4 ? n + 1 : n;
    CLR();
    s->iok = 1;
}

/* one decoded byte of a value */
static __always_inline void pb_value_byte(struct pb_pstate *s, struct pb_env *e, u8 d)
{
    u8 vm = s->vmode;
    if (vm == VM_REFS || vm == VM_IDS) {
        if (d == ',') {
            pb_item_end(s, e);
            pb_item_start(s);
            return;
        }
        s->iskip = 1;
        if (d == ':') {
            s->icol = 1;
        } else if (d == '/' && vm == VM_REFS) {
            s->isl = s->isl < 2 ? s->isl + 1 : 2;
            if (s->isl == 1) { /* the reference's type: looked up, then read (A_ITYP) */
                pb_look_name(s);
                pb_look(s, LQ_T, NT_TYPE, 0);
                s->act |= A_ITYP;
            }
            s->fnv = FNV_OFFSET; /* the id is what follows the slash */
            s->ilen = 0;
            s->iok = 1;
            s->idot = 1;
            CLR();
            return;
        }
        if (!(e->ct->c[d] & C_ID))
            s->iok = 0;
        if (d != '.')
            s->idot = 0;
        s->fnv = (s->fnv ^ d) * FNV_PRIME;
        s->ilen++;
        SH5(d);
        s->len++;
    } else if (vm == VM_INCLUDE || vm == VM_REVINCLUDE) {
        if (d == ':') {
            pb_inc_look(s);
            return;
        }
        if (!(e->ct->c[d] & C_NAME))
            s->iok = 0;
        SH5(d);
        s->len++;
    } else if (vm == VM_CONTAINED) {
        SH1(d);
        s->len++;
    }
}

/* the value ended (params.Params._value_end) */
static __always_inline void pb_value_end(struct pb_pstate *s, struct pb_env *e)
{
    u8 vm = s->vmode;
    if (vm == VM_REFS || vm == VM_IDS) {
        pb_item_end(s, e);
    } else if (vm == VM_INCLUDE || vm == VM_REVINCLUDE) {
        /* its last segment was read by A_INC (pb_line_act's pair step) */
        if (s->pend)
            return;
        u8 n = s->nseg;
        if ((n != 2 && n != 3) || !s->ityp || PV_KIND(s->ipv) != P_REFERENCE) {
            PEND(S_INCLUDE);
            return;
        }
        struct pb_tset *ts = pb_tset_of(e, s->ipv);
        if (n == 3 && (!s->vtype || !pb_bit(ts->bits, s->vtype))) {
            PEND(S_INCLUDE);
            return;
        }
        if (vm == VM_REVINCLUDE)
            pb_touch_search(s, s->ityp);
        else if (n == 3)
            pb_touch_read(s, s->vtype);
        else {
            s->tr[0] |= ts->bits[0];
            s->tr[1] |= ts->bits[1];
            s->tr[2] |= ts->bits[2];
        }
    } else if (vm == VM_CONTAINED) {
        if (s->len != 5 || s->k0 != W_FALSE)
            PEND(S_SPECIAL);
    }
}

/* the pair ended ('&', the target's end, the body's end) */
static __always_inline void pb_pair_end(struct pb_pstate *s, struct pb_env *e)
{
    if (s->qin) {
        DEV(S_MALFORMED); /* a name without '=' */
        return;
    }
    pb_value_end(s, e);
    if (s->pend) {
        DEV(s->pend);
        return;
    }
    pb_param_start(s);
}

/* a raw byte of the query seen: the double-encoding check (params.Params._raw_seen) */
static __always_inline int pb_raw_seen(struct pb_pstate *s, struct pb_env *e, u8 c)
{
    u8 p = s->p25;
    if (!p)
        return 1;
    u8 hex = (e->ct->c[c] & C_HEX) != 0;
    if (p == 1) {
        s->p25 = hex ? 2 : 0;
    } else {
        if (hex) {
            DEV(S_ENCODED);
            return 0;
        }
        s->p25 = 0;
    }
    return 1;
}

/* ---------------------------------------------------------------- the request line */

/* the base path read so far: once it has fhir.base's length, it is the base or the target is not FHIR */
static __always_inline void pb_base_check(struct pb_pstate *s)
{
    if (s->len == s->blen) {
        if (s->k0 == s->bw0 && s->k1 == s->bw1 && s->k2 == s->bw2)
            s->st = ST_AFTERBASE;
        else
            DEV(S_NOT_FHIR);
    }
}

/* one byte of the method or the version (the request line outside the target) */
static __always_inline void pb_reqline_byte(struct pb_pstate *s, u8 c, u32 f)
{
    u8 st = s->st;
    if (st == ST_METHOD) {
        if (c == ' ') {
            u64 m = s->k0;
            u32 l = s->len;
            u8 method = (m == W_GET && l == 3) ? MT_GET : (m == W_POST && l == 4) ? MT_POST :
                        (m == W_PUT && l == 3) ? MT_PUT : (m == W_DELETE && l == 6) ? MT_DELETE :
                        (m == W_HEAD && l == 4) ? MT_HEAD : MT_NONE;
            s->method = method;
            if (method == MT_NONE) {
                s->st = ST_JUNK;
            } else {
                s->st = ST_BASE;
                CLR();
            }
        } else if ((f & C_UPPER) && s->len < 7) {
            SH1(c);
            s->len++;
        } else {
            s->st = ST_JUNK;
        }
    } else if (st == ST_VER) {
        if (c == '\r')
            s->st = (s->len == 8 && s->k0 == W_HTTP11) ? ST_VERLF : ST_JUNK;
        else if ((f & C_VCHAR) && s->len < 8) {
            SH1(c);
            s->len++;
        } else
            s->st = ST_JUNK;
    } else if (st == ST_VERLF) {
        s->st = c == '\n' ? ST_HSTART : ST_JUNK;
    }
}

/* ---------------------------------------------------------------- header lines */

/* one byte of a header value (kind s->hkind), not CR */
static __always_inline void pb_hvalue_byte(struct pb_pstate *s, u8 c, u32 f)
{
    u8 sub = s->sub, hk = s->hkind;
    if (hk == H_CONTENT_LENGTH) {
        if (sub == 0) {
            if (f & C_DIGIT) {
                s->sub = 1;
                s->cl_cur = c - '0';
                s->len = 1;
            } else if (!(f & C_OWS)) {
                s->sub = 3;
                s->cl_bad = 1;
            }
        } else if (sub == 1) {
            if ((f & C_DIGIT) && s->len < 9) {
                s->cl_cur = s->cl_cur * 10 + (c - '0');
                s->len++;
            } else if (f & C_OWS) {
                s->sub = 2;
            } else {
                s->sub = 3;
                s->cl_bad = 1;
            }
        } else if (sub == 2 && !(f & C_OWS)) {
            s->sub = 3;
            s->cl_bad = 1;
        }
    } else if (hk == H_CLAIM || hk == H_CONTEXT) {
        u64 *h = hk == H_CLAIM ? &s->claim : &s->ctx;
        u8 *bad = hk == H_CLAIM ? &s->claim_bad : &s->ctx_bad;
        if (sub == 0) {
            if (f & C_CLAIM) {
                s->sub = 1;
                *h = (FNV_OFFSET ^ c) * FNV_PRIME;
                s->len = 1;
            } else if (!(f & C_OWS)) {
                s->sub = 3;
                *bad = 1;
            }
        } else if (sub == 1) {
            if ((f & C_CLAIM) && s->len < PB_CLAIM_MAX) {
                *h = (*h ^ c) * FNV_PRIME;
                s->len++;
            } else if (f & C_OWS) {
                s->sub = 2;
            } else {
                s->sub = 3;
                *bad = 1;
            }
        } else if (sub == 2 && !(f & C_OWS)) {
            s->sub = 3;
            *bad = 1;
        }
    } else if (hk == H_CONTENT_TYPE) {
        /* sub 0: leading OWS; 1: the media type (lower-cased, up to 33 bytes); 2: after it */
        if (sub == 0 && (f & C_OWS))
            return;
        if (sub <= 1) {
            if (s->len == 33) {
                s->sub = 2;
                s->ct_form = (c == ';' || (f & C_OWS)) && s->k0 == W_FORM0 && s->k1 == W_FORM1 &&
                             s->k2 == W_FORM2 && s->k3 == W_FORM3 && s->k4 == W_FORM4;
                return;
            }
            s->sub = 1;
            SH5((f & C_UPPER) ? (c | 0x20) : c);
            s->len++;
        }
    }
}

/* May the header name just read (its last 8 bytes in k0, its length in len) be one the parser
 * reads?  A 64-bit filter of the names NT_HEADER holds (kernel_abi.tables): the usual headers of a
 * client (Host, Accept, User-Agent, ...) mostly skip the name-table lookup; a name the filter
 * passes is looked up as before, so the filter decides nothing. */
static __always_inline int pb_hname_maybe(struct pb_pstate *s, struct pb_env *e)
{
    return (e->tb->hnames >> (((s->k0 ^ s->len) * NT_P1) >> 58)) & 1;
}

/* The ':' after a header name (its last 24 bytes in k0..k2, lower-cased, its length in len): what
 * the header is (NT_HEADER), counted where the request's checks need it; its value follows. */
static __always_inline void pb_hname_end(struct pb_pstate *s, struct pb_env *e)
{
    u8 hk = s->len > PB_HNAME_MAX || !pb_hname_maybe(s, e) ? 0 :
            (u8)pb_name_find(e->nt, NT_HEADER, 0, s->len, s->k0, s->k1, s->k2, 0, 0);
    s->hkind = hk;
    if (hk == H_CONTENT_LENGTH)
        s->n_cl++;
    else if (hk == H_TRANSFER_ENCODING)
        s->te = 1;
    else if (hk == H_OVERRIDE)
        s->ovr = 1;
    else if (hk == H_CLAIM)
        s->n_claim++;
    else if (hk == H_CONTEXT)
        s->n_ctx++;
    else if (hk == H_CONTENT_TYPE) {
        s->n_ct++;
        s->ct_form = 0;
    }
    s->sub = 0;
    s->cl_cur = 0;
    CLR();
    s->st = ST_HVAL;
}

/* one byte of the header section */
static __always_inline void pb_header_byte(struct pb_pstate *s, struct pb_env *e, u8 c, u32 f)
{
    u8 st = s->st;
    if (st == ST_HVAL) {
        if (c == '\r') {
            u8 hk = s->hkind;
            if (hk == H_CONTENT_LENGTH) {
                if (s->sub == 0)
                    s->cl_bad = 1;
                else if (s->sub < 3)
                    s->cl_val = s->cl_cur;
            } else if (hk == H_CLAIM && s->sub == 0) {
                s->claim_bad = 1;
            } else if (hk == H_CONTEXT && s->sub == 0) {
                s->ctx_bad = 1;
            } else if (hk == H_CONTENT_TYPE && s->sub == 1) {
                s->ct_form = s->len == 33 && s->k0 == W_FORM0 && s->k1 == W_FORM1 && s->k2 == W_FORM2 &&
                             s->k3 == W_FORM3 && s->k4 == W_FORM4;
            }
            s->st = ST_HLF;
        } else if (!(f & C_HVAL)) {
            s->st = ST_JUNK;
        } else {
            pb_hvalue_byte(s, c, f);
        }
    } else if (st == ST_HNAME) {
        if (c == ':') {
            pb_hname_end(s, e);
        } else if (f & C_TCHAR) {
            SH3((f & C_UPPER) ? (c | 0x20) : c);
            s->len++;
        } else {
            s->st = ST_JUNK;
        }
    } else if (st == ST_HSTART) {
        if (c == '\r') {
            s->st = ST_HEND;
        } else if (f & C_TCHAR) {
            s->st = ST_HNAME;
            CLR();
            SH1((f & C_UPPER) ? (c | 0x20) : c);
            s->len = 1;
        } else {
            s->st = ST_JUNK;
        }
    } else if (st == ST_HLF) {
        s->st = c == '\n' ? ST_HSTART : ST_JUNK;
    } else if (st != ST_JUNK) {
        s->st = ST_JUNK; /* ST_HEND followed by anything but LF */
    }
}

/* ---------------------------------------------------------------- runs */

#define HIGHS 0x8080808080808080ULL
#define ONES 0x0101010101010101ULL

/* n (1..8) bytes into a shift-register word: v shifted left by n bytes, and v's top n bytes */
#define SHLN(v, n) (((v) << (8 * (n) - 1)) << 1)
#define TOPN(v, n) ((v) >> (64 - 8 * (n)))
#define SH1N(b, n) do { s->k0 = SHLN(s->k0, n) | (b); } while (0)
#define SH2N(b, n) do { s->k1 = SHLN(s->k1, n) | TOPN(s->k0, n); SH1N(b, n); } while (0)
#define SH3N(b, n) do { s->k2 = SHLN(s->k2, n) | TOPN(s->k1, n); SH2N(b, n); } while (0)
#define SH5N(b, n) do { s->k4 = SHLN(s->k4, n) | TOPN(s->k3, n); s->k3 = SHLN(s->k3, n) | TOPN(s->k2, n); \
                        SH3N(b, n); } while (0)

/* Byte classes of 8 bytes at once (SWAR).  y is x with each byte's top bit cleared, so adding a
 * constant below 0x80 to y never carries from one byte into the next; IN(y, lo, hi) has 0x80 in
 * each byte in [lo, hi] (1 <= lo <= hi <= 0x7f). */
#define GE(y, v) ((y) + (0x80 - (v)) * ONES)
#define IN(y, lo, hi) (GE(y, lo) & ~GE(y, (hi) + 1) & HIGHS)
#define ALPHA(y) IN((y) | (0x20 * ONES), 'a', 'z') /* A-Z a-z: | 0x20 maps only letters to a-z */
#define ALNUM(y) (ALPHA(y) | IN(y, '0', '9'))

/* the index of the first byte with its top bit set in out (out != 0) */
#define FIRST(out) (((((out) & -(out)) >> 7) * 0x0001020304050607ULL) >> 56)

/* a header value only skipped (pb_header_byte reads the others byte by byte) */
static __always_inline int pb_hval_skipped(struct pb_pstate *s)
{
    u8 hk = s->hkind;
    return hk < H_CONTENT_LENGTH || hk == H_TRANSFER_ENCODING || hk == H_OVERRIDE;
}

/* FNV-1a over the run's n bytes (x, first byte lowest) */
static __always_inline u64 pb_fnv_run(u64 h, u64 x, u32 n)
{
#pragma unroll
    for (int i = 0; i < 8; i++)
        if (i < n)
            h = (h ^ ((x >> (8 * i)) & 0xff)) * FNV_PRIME;
    return h;
}

/* A run: the next bytes of the current token, up to 8 (x, little-endian: first byte lowest) at
 * once.  Each state's run class holds only bytes its byte path consumes without a transition or
 * a check, and a limit stops a run where the byte path would start checking a length, so a run
 * leaves the state the byte path would have left, byte for byte.  A header value or the version
 * that ends in CR LF within x takes the CR LF too.  Returns the bytes consumed (0: the byte path
 * takes the next byte). */
static __always_inline u32 pb_run(struct pb_pstate *s, u64 x)
{
    u8 st = s->st;
    u64 y = x & ~HIGHS, in;
    u32 lim = 8, len = s->len;
    u64 high = 0; /* bytes >= 0x80 that belong to the class */
    if (st == ST_HVAL) {
        u8 hk = s->hkind;
        if (pb_hval_skipped(s)) {
            in = IN(y, 0x20, 0x7e) | IN(y, '\t', '\t');
            high = x & HIGHS;
        } else if ((hk == H_CLAIM || hk == H_CONTEXT) && s->sub == 1) { /* an id's bytes after its first */
            in = ALNUM(y) | IN(y, '-', '.') | IN(y, '_', '_') | IN(y, ':', ':');
            lim = len < PB_CLAIM_MAX ? PB_CLAIM_MAX - len : 0;
        } else {
            return 0;
        }
    } else if (st == ST_QVAL) {
        u8 vm = s->vmode;
        if (s->p25)
            return 0;
        if (vm == VM_SKIP) /* not & % # + */
            in = IN(y, 0x21, 0x22) | IN(y, 0x24, 0x24) | IN(y, 0x27, 0x2a) | IN(y, 0x2c, 0x7e);
        else if (vm == VM_REFS || vm == VM_IDS)
            in = ALNUM(y) | IN(y, '-', '.');
        else if (vm == VM_INCLUDE || vm == VM_REVINCLUDE)
            in = ALNUM(y) | IN(y, '-', '-') | IN(y, '_', '_');
        else
            return 0;
    } else if (st == ST_QNAME) { /* name bytes */
        in = ALNUM(y) | IN(y, '-', '-') | IN(y, '_', '_');
        lim = len < PB_NAME_MAX ? PB_NAME_MAX - len : 0;
    } else if (st == ST_SEG) {
        if (s->len == 0 && s->ilen == 0)
            return 0; /* the first byte of a segment: the byte path */
        in = (s->sfl & SF_OP) ? (ALNUM(y) | IN(y, '-', '-') | IN(y, '_', '_')) : (ALNUM(y) | IN(y, '-', '-'));
    } else if (st == ST_HNAME || st == ST_HSTART) { /* the usual name bytes; other tchars: byte path */
        in = ALNUM(y) | IN(y, '-', '-');
    } else if (st == ST_BASE || st == ST_TSKIP || st == ST_VER) {
        in = IN(y, 0x21, 0x7e);
        if (st == ST_BASE)
            lim = len < s->blen ? s->blen - len : 0;
        else if (st == ST_VER)
            lim = len < 8 ? 8 - len : 0;
    } else if (st == ST_JUNK) {
        in = IN(y, 0x20, 0x7e) | IN(y, '\t', '\t');
        high = x & HIGHS;
    } else if (st == ST_METHOD) {
        in = IN(y, 'A', 'Z');
        lim = len < 7 ? 7 - len : 0;
    } else {
        return 0;
    }
    u64 out = (x | ~in) & HIGHS & ~high; /* 0x80 in each byte not in the class */
    u32 n = out ? FIRST(out) : 8;
    if (n > lim)
        n = lim;
    u32 crlf = (st == ST_HVAL || st == ST_VER) && n <= 6 && ((x >> (8 * n)) & 0xffff) == 0x0a0d;
    if (n == 0 && !crlf)
        return 0;
    if (st == ST_HSTART) { /* a header name starts */
        CLR();
        len = 0;
        st = ST_HNAME;
        s->st = st;
    }
    if (st == ST_HNAME) /* header names are compared lower-cased: A-Z | 0x20 */
        x |= IN(y, 'A', 'Z') >> 2;
    if (st == ST_SEG && (s->sfl & SF_OP))
        x |= IN(y, 'A', 'Z') >> 2; /* so are operation names */
    if (n) {
        u64 b = TOPN(__builtin_bswap64(x), n); /* the run's bytes, first one most significant */
        if (st == ST_SEG) {
            if (s->sfl & SF_OP) {
                SH1N(b, n);
            } else {
                u64 run = (n == 8) ? ~0ULL : ((1ULL << (8 * n)) - 1);
                if ((ALPHA(y) & HIGHS & run) != (HIGHS & run))
                    s->sfl &= ~SF_LETTERS;
                if ((IN(y, '.', '.') & HIGHS & run) != (HIGHS & run))
                    s->idot = 0;
                s->fnv = pb_fnv_run(s->fnv, x, n);
                s->ilen += n;
                SH5N(b, n);
            }
        } else if (st == ST_QNAME || (st == ST_QVAL && s->vmode != VM_SKIP)) {
            SH5N(b, n);
            if (st == ST_QVAL && (s->vmode == VM_REFS || s->vmode == VM_IDS)) {
                u64 run = (n == 8) ? ~0ULL : ((1ULL << (8 * n)) - 1);
                if ((IN(y, '.', '.') & HIGHS & run) != (HIGHS & run))
                    s->idot = 0;
                s->fnv = pb_fnv_run(s->fnv, x, n);
                s->ilen += n;
                s->iskip = 1;
            }
        } else if (st == ST_HVAL) {
            if (s->hkind == H_CLAIM)
                s->claim = pb_fnv_run(s->claim, x, n);
            else if (s->hkind == H_CONTEXT)
                s->ctx = pb_fnv_run(s->ctx, x, n);
        } else if (st == ST_HNAME || st == ST_BASE) {
            SH3N(b, n);
        } else if (st == ST_METHOD || st == ST_VER) {
            SH1N(b, n);
        }
        if (st != ST_QVAL || s->vmode != VM_SKIP)
            s->len = len + n;
        if (st >= ST_BASE && st <= ST_TSKIP)
            s->tlen += n;
        if (st == ST_BASE)
            pb_base_check(s);
    }
    if (crlf) {
        s->st = (st == ST_HVAL || (s->len == 8 && s->k0 == W_HTTP11)) ? ST_HSTART : ST_JUNK;
        if (st == ST_VER && s->st == ST_HSTART)
            s->st = ST_HSTART;
        s->w = 0x0d0a;
        n += 2;
    } else {
        s->w = 0;
    }
    return n;
}

/* The bytes of a header value the parser does not read, as far as the 32 bytes at p go: a run as
 * pb_run's for ST_HVAL, four words at once, so that a header's value and its CR LF take one step.
 * Returns the bytes consumed (0: the word-sized run or the byte path takes over). */
#define HV_OUT(x) ((((x) | ~(IN((x) & ~HIGHS, 0x20, 0x7e) | IN((x) & ~HIGHS, '\t', '\t'))) & HIGHS) & ~((x) & HIGHS))
static __always_inline u32 pb_hval_run(struct pb_pstate *s, u8 *p)
{
    u64 x0 = ((u64 *)p)[0], x1 = ((u64 *)p)[1], x2 = ((u64 *)p)[2], x3 = ((u64 *)p)[3];
    u64 o0 = HV_OUT(x0), o1 = HV_OUT(x1), o2 = HV_OUT(x2), o3 = HV_OUT(x3);
    u64 o, x, nx;
    u32 n;
    if (o0) {
        n = 0, o = o0, x = x0, nx = x1;
    } else if (o1) {
        n = 8, o = o1, x = x1, nx = x2;
    } else if (o2) {
        n = 16, o = o2, x = x2, nx = x3;
    } else if (o3) {
        n = 24, o = o3, x = x3, nx = 0;
    } else {
        s->len += 32;
        s->w = 0;
        return 32;
    }
    u32 f = FIRST(o) & 7;
    u64 two = f < 7 ? (x >> (8 * f)) & 0xffff : (x >> 56) | ((nx & 0xff) << 8); /* the bytes at n, n + 1 */
    n += f;
    if (two != 0x0a0d) {
        if (!n)
            return 0;
        s->len += n;
        s->w = 0;
        return n;
    }
    s->len += n;
    s->st = ST_HSTART;
    s->w = 0x0d0a;
    return n + 2;
}

/* A header name and its ':' in one step, when both lie within the 32 bytes at p (s->st is
 * ST_HSTART): the name's bytes as pb_run takes them (letters, digits, '-': the names a client
 * sends), lower-cased into k0..k2 as SH3 shifts them, then pb_hname_end as the byte path calls it
 * at the ':'.  Returns the bytes consumed (0: the runs and the byte path take the name). */
#define HN_OUT(x) ((((x) | ~(ALNUM((x) & ~HIGHS) | IN((x) & ~HIGHS, '-', '-'))) & HIGHS))
#define HN_LOWER(x) ((x) | (IN((x) & ~HIGHS, 'A', 'Z') >> 2))
static __always_inline u32 pb_hname_run(struct pb_pstate *s, struct pb_env *e, u8 *p)
{
    u64 x0 = ((u64 *)p)[0], x1 = ((u64 *)p)[1], x2 = ((u64 *)p)[2], x3 = ((u64 *)p)[3];
    u64 o0 = HN_OUT(x0), o1 = HN_OUT(x1), o2 = HN_OUT(x2), o3 = HN_OUT(x3);
    u64 o, x;
    u32 n;
    if (o0)
        n = 0, o = o0, x = x0;
    else if (o1)
        n = 8, o = o1, x = x1;
    else if (o2)
        n = 16, o = o2, x = x2;
    else if (o3)
        n = 24, o = o3, x = x3;
    else
        return 0;
    u32 f = FIRST(o) & 7;
    if (((x >> (8 * f)) & 0xff) != ':')
        return 0;
    n += f;
    if (!n)
        return 0;
    CLR();
    if (n <= PB_HNAME_MAX) { /* the bytes a lookup reads; a longer name is no header the parser reads */
        u32 m = n < 8 ? n : 8;
        SH3N(TOPN(__builtin_bswap64(HN_LOWER(x0)), m), m);
        if (n > 8) {
            m = n < 16 ? n - 8 : 8;
            SH3N(TOPN(__builtin_bswap64(HN_LOWER(x1)), m), m);
        }
        if (n > 16) {
            m = n - 16;
            SH3N(TOPN(__builtin_bswap64(HN_LOWER(x2)), m), m);
        }
    }
    s->len = n;
    pb_hname_end(s, e);
    s->w = ':';
    return n + 1;
}

/* ---------------------------------------------------------------- scanning */

/* One step of the request-line phase (method, target, version) or of a body's parameters: the
 * byte c (class f), or the body's end (at_end).  BCC has no calls between BPF functions, so every
 * function is inlined where it is called: each heavy one is called from one place only, after the
 * byte has been sorted into what it ends and what it adds. */
/* The first half of a request-line step: what the byte means here.  Results go to s->a_*
 * (a_pair: 1 a pair ended, 2 it ended with the target or the body). */
static __always_inline void pb_line_classify(struct pb_pstate *s, struct pb_env *e, u8 st, u8 c, u32 f, u8 at_end)
{
    if (at_end) { /* the form body ended */
        if (st == ST_PCT1 || st == ST_PCT2)
            DEV(S_MALFORMED);
        else if (st == ST_QNAME || st == ST_QVAL)
            ACT_PAIR(2);
        return;
    }
    if (!s->body && c == ' ') {
        if (s->tlen == 0) {
            s->st = ST_JUNK;
            return;
        }
        s->act |= A_TEND;
        if (st == ST_BASE)
            DEV(S_NOT_FHIR);
        else if (st == ST_AFTERBASE)
            DEV(s->method == MT_POST ? S_BUNDLE : S_TYPE_PARAM);
        else if (st == ST_SEG)
            ACT_TERM(' ');
        else if (st == ST_PCT1 || st == ST_PCT2)
            DEV(S_MALFORMED);
        else if (st == ST_QNAME || st == ST_QVAL)
            ACT_PAIR(2);
        return;
    }
    if (!s->body && !(f & C_VCHAR)) {
        s->st = ST_JUNK;
        return;
    }
    if (!s->body)
        s->tlen++;
    if (st == ST_TSKIP)
        return;
    if (st == ST_SEG) {
        if (c == '/' || c == '?')
            ACT_TERM(c);
        else
            pb_seg_byte(s, c, f);
        return;
    }
    if (st == ST_BASE) {
        SH3(c);
        s->len++;
        pb_base_check(s);
        return;
    }
    if (st == ST_AFTERBASE) {
        if (c == '/') {
            s->seg = 0;
            s->sub = 0;
            pb_seg_start(s);
        } else if (c == '?') {
            if (s->method == MT_POST) {
                DEV(S_BUNDLE);
            } else {
                s->form = FORM_SYSTEM;
                pb_query_start(s, QM_SYSTEM);
            }
        } else {
            DEV(S_NOT_FHIR);
        }
        return;
    }
    if (!pb_raw_seen(s, e, c)) /* the query: a raw byte */
        return;
    u8 d;
    u8 escaped = 0;
    if (st == ST_PCT1 || st == ST_PCT2) {
        if (!(f & C_HEX)) {
            DEV(S_MALFORMED);
            return;
        }
        u8 nib = (c <= '9') ? c - '0' : ((c | 0x20) - 'a' + 10);
        if (st == ST_PCT1) {
            s->pctv = nib;
            s->st = ST_PCT2;
            return;
        }
        s->st = s->qin ? ST_QNAME : ST_QVAL;
        d = (u8)((s->pctv << 4) | nib);
        escaped = 1;
    } else if (c == '%') {
        s->st = ST_PCT1;
        return;
    } else if (c == '#') {
        DEV(S_MALFORMED);
        return;
    } else if (s->qin) {
        if (c == '=') {
            ACT_SEP('=');
            return;
        }
        if (c == '&') {
            DEV(S_MALFORMED);
            return;
        }
        d = c;
    } else if (c == '&') {
        ACT_PAIR(1);
        return;
    } else {
        d = c == '+' ? ' ' : c;
    }
    /* a decoded byte of a name or a value */
    if (s->qin) {
        if (d == '%') {
            DEV(S_ENCODED); /* a name never holds '%' */
        } else if (d == ':' || d == '.') {
            ACT_SEP(d);
        } else if (e->ct->c[d] & C_NAME) {
            if (s->len >= PB_NAME_MAX) {
                DEV(S_MALFORMED);
            } else {
                SH5(d);
                s->len++;
            }
        } else {
            DEV(S_MALFORMED);
        }
    } else {
        if (escaped && d == '%')
            s->p25 = 1;
        s->act |= A_VALUE;
        s->a_d = d;
    }
}

/* One byte of the request line or of a body's parameters (c, class f), or the body's end
 * (at_end): what it means here; the steps it calls for run in the next loop iterations. */
static __always_inline void pb_line_step(struct pb_pstate *s, struct pb_env *e, u8 c, u32 f, u8 at_end)
{
    u8 st = s->st;
    if (!(st >= ST_BASE && st <= ST_TSKIP)) {
        pb_reqline_byte(s, c, f);
        return;
    }
    pb_line_classify(s, e, st, c, f, at_end);
}

/* Run one pending step (the lowest bit of s->act): one per loop iteration, so the verifier
 * follows each step on its own rather than every combination of them in one iteration. */
static __always_inline void pb_line_act(struct pb_pstate *s, struct pb_env *e)
{
    u32 a = s->act;
    if (a & A_LOOK) {
        pb_look_step(s, e);
    } else if (a & A_TERM0) {
        s->act = a & ~A_TERM0;
        pb_seg_look(s);
    } else if (a & A_TERM) {
        s->act = a & ~A_TERM;
        pb_seg_end(s, e, s->a_term);
    } else if (a & A_QUERY) {
        s->act = a & ~A_QUERY;
        pb_path_query(s);
    } else if (a & A_QSYS) {
        s->act = a & ~A_QSYS;
        pb_query_start(s, QM_SYSTEM);
    } else if (a & A_SEP0) {
        s->act = a & ~A_SEP0;
        pb_name_seg_look(s);
    } else if (a & A_SEP) {
        u8 sep = s->a_sep;
        s->act = a & ~A_SEP;
        pb_name_seg_end(s, e, sep);
        asm volatile("" ::: "memory");
        if (sep == '=' && s->st == ST_QNAME) { /* the name ended, the value starts */
            s->qin = 0;
            s->st = ST_QVAL;
            s->nseg = 0;
            s->iok = 1;
            pb_item_start(s);
        } else if (s->st == ST_QNAME) { /* the next segment of the name starts */
            CLR();
        }
    } else if (a & A_NARROW) {
        s->act = a & ~A_NARROW;
        pb_narrowed(s, e);
    } else if (a & A_CHAIN) {
        s->act = a & ~A_CHAIN;
        pb_chain_from(s, e, s->x_cpv, s->x_xt);
    } else if (a & A_MOD) {
        s->act = a & ~A_MOD;
        pb_modifier(s, e, s->x_mpv, s->x_mm, s->x_mt);
    } else if (a & A_NAMES) {
        s->act = a & ~A_NAMES;
        pb_names_mode(s, e, s->x_npv, s->x_nm, s->x_nmt, s->x_nid);
    } else if (a & A_NAMEID) {
        s->act = a & ~A_NAMEID;
        pb_name_target(s, e, s->type_id, s->x_idh);
    } else if (a & A_ITYP) {
        s->act = a & ~A_ITYP;
        s->ityp = s->lq_v[LQ_T];
    } else if (a & A_INC) {
        s->act = a & ~A_INC;
        pb_inc_seg(s, e);
    } else if (a & A_VALUE) {
        s->act = a & ~A_VALUE;
        pb_value_byte(s, e, s->a_d);
    } else if (a & A_PAIR) {
        if ((s->st == ST_QNAME || s->st == ST_QVAL) && !s->qin && !s->x_pl &&
            (s->vmode == VM_INCLUDE || s->vmode == VM_REVINCLUDE)) {
            s->x_pl = 1; /* the include's last segment first (A_LOOK, A_INC), then the pair's end */
            pb_inc_look(s);
            return;
        }
        s->x_pl = 0;
        s->act = a & ~A_PAIR;
        if (s->st == ST_QNAME || s->st == ST_QVAL) {
            pb_pair_end(s, e);
            asm volatile("" ::: "memory");
            if (s->a_pair == 2 && (s->st == ST_QNAME || s->st == ST_QVAL) && s->qmode == QM_SYSTEM)
                /* the base's query: HAPI's page links, or a system search */
                DEV((s->method == MT_GET || s->method == MT_HEAD) && s->paging && s->getpages ? S_PAGING :
                                                                                             S_TYPE_PARAM);
        }
    } else {
        s->act = 0;
        if (a & A_TEND) {
            s->st = ST_VER;
            CLR();
        }
    }
}

/* 1, or 0 when the kernel's loop budget is spent: the may_goto instruction (kernel 6.9+), written
 * as its bytes because LLVM 14 does not know the mnemonic (code BPF_JMP | BPF_JCOND, src
 * BPF_MAY_GOTO, off +1: it jumps over "r = 1" when the budget is spent).  The verifier prunes a
 * loop at a may_goto whose state it has seen already, so a loop whose state lives in memory is
 * verified in a few passes over its body however many steps it takes at run time. */
static __always_inline int pb_may_goto(void)
{
    u64 r;
    asm volatile("%0 = 0\n\t.quad 0x00000000000100e5\n\t%0 = 1" : "=r"(r));
    return r;
}

#define PH_HEAD 0          /* pb_scan: the header section */
#define PH_LINE 1          /* the request line, or a form body's parameters */
#define PH_BOTH 2          /* the request line, then the header section (s->ph says which) */

/* One step of a phase (line = 1: the request line or a form body's parameters; 0: the header
 * section): PB_NEXT to go on, PB_STOP when the phase ended or the data did (s->done set), or
 * PB_TO_HEAD when the request line is read and `both` lets the header section follow in the same
 * loop.  Nothing derived from s or e outlives a step (no hoisted addresses spilled to the stack,
 * which would differ between paths and keep the verifier from pruning the loop). */
#define PB_NEXT 0
#define PB_STOP 1
#define PB_TO_HEAD 2
static __always_inline int pb_step(struct pb_pstate *s, struct pb_env *e, void *data, void *end, const int line,
                                   const int both)
{
    if (line && s->act) { /* the steps the last byte called for */
        pb_line_act(s, e);
        return PB_NEXT;
    }
    u32 i = s->pos;
    u32 stop = line && s->body ? s->end : PB_HDR_MAX;
    if (line && !s->body && (s->st == ST_HSTART || s->st == ST_JUNK)) {
        if (both)
            return PB_TO_HEAD; /* the request line is read: the header section next */
        s->done = 1; /* the request line is read: the header phase goes on */
        return PB_STOP;
    }
    if (i >= stop) {
        if (line && s->body == 1) { /* the body's end: its last pair (its steps first) */
            pb_line_step(s, e, 0, 0, 1);
            s->body = 2;
            return PB_NEXT;
        }
        s->done = 1;
        return PB_STOP;
    }
    u8 *p = data + (i & (PB_HDR_MAX + PB_BODY_MAX - 1));
    if ((void *)(p + 1) > end) {
        s->done = 1;
        return PB_STOP;
    }
    u8 c;
    if (!line && s->st == ST_HSTART && i + 32 <= stop && (void *)(p + 32) <= end) {
        u32 n = pb_hname_run(s, e, p);
        if (n) {
            s->pos = i + n;
            return PB_NEXT;
        }
    }
    if (!line && s->st == ST_HVAL && pb_hval_skipped(s) && i + 32 <= stop && (void *)(p + 32) <= end) {
        u32 n = pb_hval_run(s, p);
        if (n) {
            s->pos = i + n;
            return PB_NEXT;
        }
    }
    if (i + 8 <= stop && (void *)(p + 8) <= end) {
        u64 x = *(u64 *)p;
        u32 n = pb_run(s, x);
        if (n >= 8 || (line && (s->st == ST_HSTART || s->st == ST_JUNK))) {
            s->pos = i + n; /* a whole run, or the request line's CR LF taken with the version */
            return PB_NEXT;
        }
        i += n; /* the byte that ended the run: the byte path takes it in the same step */
        c = (x >> (8 * n)) & 0xff;
    } else {
        c = *p;
    }
    s->pos = i + 1;
    u32 f = e->ct->c[c];
    u32 w = (s->w << 8) | c;
    s->w = w;
    if (line) {
        pb_line_step(s, e, c, f, 0);
        return PB_NEXT;
    }
    if (w == 0x0d0a0d0a) {
        s->head_end = i + 1;
        s->done = 1;
        return PB_STOP;
    }
    pb_header_byte(s, e, c, f);
    return PB_NEXT;
}

/* Scan from s->pos in one phase (mode PH_LINE: the request line, until the header section starts
 * or the line is junk, or a body's parameters, until s->end; PH_HEAD: the header section, until
 * its end) or in both (PH_BOTH), until the loop budget runs out.  Sets s->done when the phase
 * ended or the data did. */
static __always_inline void pb_scan(struct sk_msg_md *msg, struct pb_pstate *s, struct pb_env *e, const int mode)
{
    void *data = (void *)(long)msg->data;
    void *end = (void *)(long)msg->data_end;
#pragma clang loop unroll(disable)
    for (;;) {
        if (!pb_may_goto())
            break; /* the kernel's loop budget (8M steps) is spent: the caller continues by tail call */
        asm volatile("" ::: "memory"); /* keep the state in memory (see above) */
        asm volatile("" : "+r"(s), "+r"(e));
        int r;
        if (mode != PH_BOTH)
            r = pb_step(s, e, data, end, mode, 0);
        else if (RD(s->ph)) /* each phase's step is its own code: one phase's paths never meet the other's */
            r = pb_step(s, e, data, end, 1, 1);
        else
            r = pb_step(s, e, data, end, 0, 1);
        if (r == PB_TO_HEAD)
            s->ph = 0;
        else if (r == PB_STOP)
            break;
    }
}

#endif
