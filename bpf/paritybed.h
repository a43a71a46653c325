/* paritybed.h: the map keys, values and event records shared by the kernel programs
 * (bpf/paritybed.c) and the control plane, and the codes (codes.h).  enforcer/kernel_abi.py
 * mirrors every struct here with ctypes; tests/test_kernel_abi.py checks the layouts, so change
 * both together.  The parser's own state is in parser.h (kernel-internal).
 */
#ifndef PARITYBED_H
#define PARITYBED_H

#include "codes.h"

#define PB_TYPES 147          /* type ids 0..146 (0: none) */
#define PB_TW 3               /* words of a type-id bitmap */
#define PB_INTER 8            /* interaction codes 0..7 */

/* knobs: array[1], written by the control plane only */
struct pb_knobs {
    __u64 real_clock;        /* 0: virtual clock (vnow), 1: bpf_ktime_get_ns() */
    __s64 vnow;              /* virtual clock: simulated t in ns */
    __u64 record_all;        /* 1: an event for every decision, allowed ones too */
    __u64 registry_version;  /* BAA registry version in force (AI-BOM first contacts) */
};

/* ctab: array[1], the character class table */
struct pb_ctab {
    __u32 c[256];
};

/* A set of (type, interaction) pairs: per interaction code, a bitmap of type ids. */
struct pb_pairs {
    __u64 b[PB_INTER * PB_TW]; /* interaction i, word w: b[i * PB_TW + w] (one dimension: BCC's table
                                * types flatten nested arrays wrongly) */
};

/* agents: array of PB_AGENTS slots, two entries each (the one in force: agent_live) */
#define PB_AGENTS 256
struct pb_agent {
    __u64 key;               /* the agent: FNV-1a 64 of its name (0: a free entry) */
    __u32 server_addr[4];    /* policy fhir.server, IPv4 as ::ffff:a.b.c.d (network order) */
    __u16 server_port;       /* network byte order */
    __u8 mode;               /* M_* */
    __u8 base_len;           /* length of fhir.base */
    __u32 allow_shapes;      /* bit S_* set: that shape is allowed */
    __u8 bound;              /* bound to launch contexts (policy context.bound) */
    __u8 pad[7];
    __u64 base_w[3];         /* fhir.base packed like a shift register (see classify.pack_words) */
    __s64 interval;          /* GCRA T in clock ns (0: no rate limit) */
    __s64 tau;               /* GCRA tolerance (burst-1)*T */
    __s64 hold;              /* quarantine hold in clock ns; PB_I64_MAX: until released */
    __s64 np_interval;       /* new-patient budget: GCRA T (0: none) */
    __s64 np_tau;
    __s64 np_window;         /* a patient not named for this long is new again */
    struct pb_pairs allow;   /* fhir.allow */
    struct pb_pairs unscoped; /* context.unscoped: pairs the agent may use naming no patient */
};

/* replicas: array of PB_REPLICAS entries, found by replica_ids (cgroup id -> entry) or, for a
 * connection, by the entry its socket storage keeps (pb_sock.rslot).  agent/replica/slot/cgid
 * written by the control plane, tat/np_tat/q_until by the kernel (and q_until by the control
 * plane on release). */
#define PB_REPLICAS 4096
struct pb_replica {
    __u64 agent;             /* agents key */
    __s64 tat;               /* GCRA theoretical arrival time */
    __s64 q_until;           /* quarantined while now < q_until */
    __s64 np_tat;            /* the new-patient budget's GCRA */
    __u32 replica;
    __u32 seen_n;            /* entries of this replica in seenpat (at most PB_SEEN_MAX) */
    __u32 slot;              /* its agent's slot in agents (written by the control plane) */
    __u32 entry;             /* its own index in replicas (written at registration) */
    __u64 cgid;              /* the replica's cgroup id (0: a free entry) */
    __u64 rel_seen;          /* releases[entry] when the kernel last applied a release */
};

/* lanebits: hash, (agent, lane class) -> the class's pairs */
struct pb_class_key {
    __u64 agent;
    __u32 cls;               /* lane class index (sorted lane names of the agent's policy) */
    __u32 pad;
};

struct pb_lane_key {
    __u64 cgid;
    __u64 claim;             /* FNV-1a 64 of the claim id */
};
struct pb_lane {
    __s64 expiry;            /* the lane is open while now < expiry */
    __u32 cls;
    __u32 pad;
};

/* contexts: hash, (cgid, FNV-1a 64 of the context id) -> the launch context */
struct pb_ctx_key {
    __u64 cgid;
    __u64 ctx;
};
struct pb_ctx {
    __u64 patient;           /* FNV-1a 64 of the patient id */
    __u64 encounter;         /* of the encounter id; 0: none */
    __s64 expiry;            /* open while now < expiry */
};

/* seenpat: hash, (cgid, patient hash) -> when the replica last named the patient in an allowed
 * request (clock ns; new-patient budget).  At most PB_SEEN_MAX entries per replica: a full set
 * records no other patient (enforcer/contexts.SeenPatients) */
#define PB_SEEN_MAX 4096
struct pb_pat_key {
    __u64 cgid;
    __u64 patient;
};

struct pb_addr_key {
    __u32 addr[4];           /* IPv6, or IPv4 mapped as ::ffff:a.b.c.d (network order) */
    __u16 port;              /* network byte order */
    __u16 pad[3];
};
struct pb_endpoint {          /* registry value */
    __u64 name;              /* FNV-1a 64 of the endpoint name */
    __s64 lo;                /* covered while lo <= now < hi */
    __s64 hi;
    __u32 active;
    __u32 pad;
};
struct pb_envelope_key {
    __u64 agent;
    __u64 name;
};
struct pb_seen_key {
    __u64 cgid;
    struct pb_addr_key addr;
};

/* ntab: array[1], the names the parser looks up by their exact bytes, packed like the parser's
 * shift register (word 0 holds the last 8 bytes, classify.pack_words): resource types, the
 * search parameters of each type (ctx = the type id; 0 for the parameters of every type),
 * modifiers, header names.  An open table: a name's hash picks a slot, the name is in one of
 * the PB_NT_PROBES slots from there (the control plane picked a multiplier that makes it so);
 * each entry's table, context, length and bytes are compared in full, so a collision never
 * matches.  A few memory reads instead of a hash-map helper call per name. */
#define PB_NT_BITS 13
#define PB_NT_SIZE (1 << PB_NT_BITS)
#define PB_NT_PROBES 4
#define NT_TYPE 1             /* val: type id */
#define NT_PARAM 2            /* val: kind | target set << 5 (PV_*) */
#define NT_HEADER 3           /* val: H_* (names lower-cased) */
#define NT_MOD 4              /* val: modifier id */
/* the slot hash: w0 ^ w1*P1 ^ w2*P2 ^ w3*P3 ^ w4*P4 ^ (ctx << 16 | tab << 8 | len)*P5, times mult */
#define NT_P1 0x9e3779b97f4a7c15ULL
#define NT_P2 0xc2b2ae3d27d4eb4fULL
#define NT_P3 0x165667b19e3779f9ULL
#define NT_P4 0xd6e8feb86659fd93ULL
#define NT_P5 0xff51afd7ed558ccdULL
struct pb_name {
    __u64 w[5];
    __u8 tab;                /* NT_*; 0: empty slot */
    __u8 len;                /* bytes in the name */
    __u16 val;
    __u16 ctx;               /* NT_PARAM: the type id whose parameter it is (0: every type) */
    __u16 pad;
};
struct pb_ntab {
    __u64 mult;              /* odd */
    struct pb_name e[PB_NT_SIZE];
};

/* tabs: array[1], the grammar's other tables (enforcer/grammar.py) */
#define PB_TSETS 128
struct pb_tset {              /* the targets of reference parameters */
    __u64 bits[PB_TW];       /* type ids */
    __u16 n;                 /* how many */
    __u16 m[PB_NARROW];      /* the type ids when n <= PB_NARROW */
    __u16 pad[3];
};
struct pb_tables {
    struct pb_tset tset[PB_TSETS];
    __u64 comp[PB_TYPES * PB_TW];  /* compartment owner type id t -> its member types: comp + t * PB_TW */
    __u16 modok[32];              /* parameter kind -> the modifier ids that apply (bit id) */
    __u16 patient, encounter, valueset;  /* their type ids */
    __u16 pad;
    __u8 debruijn[64];            /* lowest set bit by de Bruijn multiplication (pb_ctz) */
    __u64 hnames;                 /* header-name filter: bit ((last 8 bytes ^ length) * NT_P1) >> 58
                                   * of each name NT_HEADER holds (pb_hname_maybe) */
};

/* per-socket state (sk_storage); every field below `cookie` belongs to the *connection*: reset
 * by the SYN that opens it (pb_unseen).  Positions are TCP sequence numbers, compared modulo
 * 2^32: the parser's verdicts are tied to the exact bytes of the stream they judged. */
#include "parser.h"
struct pb_sock {
    __u64 cookie;            /* the socket's key in fhir_socks (sk_msg redirects an approved message to it) */
    __u64 cgid;              /* the replica whose connection this is (its cgroup when the SYN left) */
    __u64 writer;            /* pid_tgid of the thread whose message was approved last */
    __u32 isn;               /* initial sequence number (the SYN) */
    __u32 next_seq;          /* where the next approved byte goes: every approved byte before it is queued */
    __u32 msg_start;         /* first byte of the last approved message */
    __u32 head_end;          /* after the head of the last approved request */
    __u32 body_end;          /* after its body (head_end when it has none) */
    __u32 approved_end;      /* the backstop: no byte at or after it leaves */
    __u8 conn;               /* 1: a replica's connection to its FHIR server, seen from its SYN */
    __u8 reported;           /* unapproved bytes already reported on this connection (one event) */
    __u8 refused;            /* a refused packet of this socket already reported (one event) */
    __u8 pad;
    __u32 rslot;             /* the connection's replica: its entry in replicas (set with cgid, checked by it) */
    struct pb_pstate ps;
};

/* ---- the event record (ring buffer) ---- */
struct pb_event {
    __s64 t;                 /* the clock value the decision used */
    __u64 cgid;
    __u64 claim;             /* claim hash (fhir, F_CLAIM) */
    __s64 until;             /* q_until set by this decision (F_QUARANTINE/F_KILL) */
    __u64 registry_version;  /* egress: version in force */
    __u64 endpoint;          /* egress: registry name hash (0: not in the registry) */
    __u64 tr[PB_TW];         /* fhir: the types it touches to read (besides the primary pair) */
    __u64 ts[PB_TW];         /* and to search */
    __u64 ctx;               /* fhir: the launch context presented (hash; F_CONTEXT) */
    __u64 pat[PB_NPAT];      /* fhir: the distinct patients it names (hashes; npat of them, up to PB_NPAT) */
    __u64 enc;               /* fhir: the first encounter it names (hash; nenc) */
    __u32 addr[4];           /* egress: destination */
    __u32 size;              /* fhir: bytes in the message */
    __u16 port;              /* egress: destination port, network order */
    __u16 type_id;           /* fhir: the primary pair */
    __u8 kind;               /* K_* */
    __u8 hook;               /* HOOK_* */
    __u8 decision;           /* PB_ALLOW/DENY/ALERT */
    __u8 reason;             /* R_* */
    __u8 shape;              /* S_* */
    __u8 interaction;        /* I_* */
    __u8 method;             /* MT_* */
    __u8 flags;              /* F_* */
    __u16 out_type;          /* fhir, type-not-in-envelope: the first touch outside the envelope */
    __u8 out_inter;
    __u8 named;              /* fhir: NM_* */
    __u16 sock_family;       /* HOOK_SOCKET: the refused socket's family, type, protocol; */
    __u16 sock_type;         /* HOOK_SOCKOPT: level in sock_type, option name in sock_protocol */
    __u32 sock_protocol;
    __u8 npat;               /* fhir: distinct patients named (PB_NPAT + 1: more than PB_NPAT) */
    __u8 nenc;               /* fhir: encounters named (2: several) */
    __u16 pad;
};

/* lost_by: events the ring buffers had no room for, by what they would have said (the total is
 * lost[0]); an attacker flooding one ring cannot make a decision vanish without a trace */
struct pb_lost_key {
    __u64 cgid;
    __u8 kind;
    __u8 decision;
    __u8 reason;
    __u8 hook;
    __u32 pad;
};

/* counters: per-CPU array indexed kind * 16 + reason (decisions) ; lost: array[1] */
#define PB_COUNTERS 32

#endif
