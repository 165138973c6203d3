// SPDX-License-Identifier: GPL-2.0
/*
 * A QEMU TCG plugin for `cargo xtask bench-profile`: counts the guest
 * instructions executed in each translation block, and writes the counts
 * of all blocks to OUT.N each time the guest executes the block at
 * address SNAP (the bench marks its windows by calling a syscall there).
 * The last write is at exit. The counts are cumulative: the instructions
 * of a window are the difference of two writes.
 *
 *   -plugin libtcg-insn-profile.so,snap=HEXADDR,out=PATH[,vcpu=N][,skip=HEXADDR...]
 *
 * With vcpu=N only that vCPU's instructions are counted. Each skip= names
 * a function whose calls are not counted, with everything they run until
 * they return: interrupt handlers, softirqs and the socket backlog, which
 * are not the sender's work but land on its CPU at times no two runs
 * share. A call is seen as a block that ends in `call rel32` to a skip
 * function; its return, as the next block that starts at the address
 * after that call. The return addresses are a stack per vCPU, so nested
 * skipped calls (a softirq in an interrupt) pair up. What a skipped call
 * runs is counted apart, per skip function, in the lines "skip ADDR N".
 *
 * Built by xtask with the host's gcc. Written against QEMU 7.2's plugin
 * API, version 1, whose few declarations are repeated below: Debian
 * packages no qemu-plugin.h. With -icount QEMU runs one vCPU at a time,
 * so the counters need no atomics.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t;
struct qemu_plugin_tb;

enum qemu_plugin_cb_flags {
	QEMU_PLUGIN_CB_NO_REGS,
	QEMU_PLUGIN_CB_R_REGS,
	QEMU_PLUGIN_CB_RW_REGS,
};

enum qemu_plugin_op {
	QEMU_PLUGIN_INLINE_ADD_U64,
};

typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id,
					       struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index,
					    void *userdata);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id,
					   qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb,
					  qemu_plugin_vcpu_udata_cb_t cb,
					  enum qemu_plugin_cb_flags flags,
					  void *userdata);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb,
					      enum qemu_plugin_op op,
					      void *ptr, uint64_t imm);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
uint64_t qemu_plugin_tb_vaddr(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb,
						 size_t idx);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
uint64_t qemu_plugin_insn_vaddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id,
				    qemu_plugin_udata_cb_t cb, void *userdata);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

/* one per translation; a block translated again gets another */
struct block {
	uint64_t vaddr;
	uint64_t insns;
	uint64_t n_insns;
	/* where a skipped call made by the block's last insn returns, or 0 */
	uint64_t skip_return;
	unsigned int skip;
};

#define MAX_SKIPS	64
#define MAX_VCPUS	64
#define MAX_DEPTH	32

/* a skipped call a vCPU is in: where it returns, which function it calls */
struct frame {
	uint64_t ret;
	unsigned int skip;
};

struct vcpu_state {
	struct frame frames[MAX_DEPTH];
	unsigned int depth;
	unsigned int lost;
};

static struct block **blocks;
static size_t nr_blocks, max_blocks;
static uint64_t snap_vaddr;
static const char *out_prefix;
static unsigned int nr_writes;
static uint64_t skips[MAX_SKIPS];
/* per skip function, the instructions run in its calls (the innermost) */
static uint64_t skipped[MAX_SKIPS];
static unsigned int nr_skips;
static int only_vcpu = -1;
static struct vcpu_state vcpus[MAX_VCPUS];

static void write_counts(void)
{
	char path[4096];
	FILE *f;
	size_t i;

	snprintf(path, sizeof(path), "%s.%u", out_prefix, nr_writes++);
	f = fopen(path, "w");
	if (!f) {
		perror(path);
		return;
	}
	for (i = 0; i < nr_blocks; i++) {
		if (blocks[i]->insns)
			fprintf(f, "%" PRIx64 " %" PRIu64 "\n",
				blocks[i]->vaddr, blocks[i]->insns);
	}
	for (i = 0; i < nr_skips; i++)
		fprintf(f, "skip %" PRIx64 " %" PRIu64 "\n", skips[i], skipped[i]);
	fclose(f);
}

/*
 * The mark is a syscall of the sender's, made in no skipped call: a frame
 * left on its vCPU is stale (a task preempted in an interrupt that
 * returned on another vCPU).
 */
static void on_snap(unsigned int vcpu_index, void *userdata)
{
	vcpus[vcpu_index % MAX_VCPUS].depth = 0;
	write_counts();
}

static void on_qemu_exit(qemu_plugin_id_t id, void *userdata)
{
	unsigned int i;

	write_counts();
	for (i = 0; i < MAX_VCPUS; i++) {
		if (vcpus[i].lost)
			fprintf(stderr,
				"tcg-insn-profile: vCPU %u: %u skipped calls nested deeper than %d\n",
				i, vcpus[i].lost, MAX_DEPTH);
	}
}

/* The index of the skip function at vaddr, or nr_skips. */
static unsigned int skip_index(uint64_t vaddr)
{
	unsigned int i;

	for (i = 0; i < nr_skips; i++) {
		if (skips[i] == vaddr)
			break;
	}
	return i;
}

/* Notes in b where its last insn returns to if it calls a skip function. */
static void find_skip_call(struct block *b, struct qemu_plugin_tb *tb)
{
	struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, b->n_insns - 1);
	const uint8_t *code = qemu_plugin_insn_data(insn);
	uint64_t next = qemu_plugin_insn_vaddr(insn) + 5;
	int32_t rel;

	if (qemu_plugin_insn_size(insn) != 5 || code[0] != 0xe8)
		return;
	memcpy(&rel, code + 1, sizeof(rel));
	b->skip = skip_index(next + rel);
	if (b->skip < nr_skips)
		b->skip_return = next;
}

/*
 * A block counts unless its vCPU is filtered out or inside a skipped
 * call; the block a skipped call returns to counts again.
 */
static void on_exec(unsigned int vcpu_index, void *userdata)
{
	struct block *b = userdata;
	struct vcpu_state *v = &vcpus[vcpu_index % MAX_VCPUS];

	if (v->depth && v->frames[v->depth - 1].ret == b->vaddr)
		v->depth--;
	if (only_vcpu < 0 || vcpu_index == (unsigned int)only_vcpu) {
		if (v->depth)
			skipped[v->frames[v->depth - 1].skip] += b->n_insns;
		else
			b->insns += b->n_insns;
	}
	if (!b->skip_return)
		return;
	if (v->depth == MAX_DEPTH) {
		v->lost++;
		return;
	}
	v->frames[v->depth].ret = b->skip_return;
	v->frames[v->depth].skip = b->skip;
	v->depth++;
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
	struct block *b = calloc(1, sizeof(*b));

	if (!b)
		abort();
	if (nr_blocks == max_blocks) {
		max_blocks = max_blocks ? 2 * max_blocks : 65536;
		blocks = realloc(blocks, max_blocks * sizeof(*blocks));
		if (!blocks)
			abort();
	}
	blocks[nr_blocks++] = b;
	b->vaddr = qemu_plugin_tb_vaddr(tb);
	b->n_insns = qemu_plugin_tb_n_insns(tb);
	if (only_vcpu < 0 && !nr_skips) {
		/* counting everything: the cheaper inline add does */
		qemu_plugin_register_vcpu_tb_exec_inline(tb,
							 QEMU_PLUGIN_INLINE_ADD_U64,
							 &b->insns, b->n_insns);
	} else {
		if (b->n_insns)
			find_skip_call(b, tb);
		qemu_plugin_register_vcpu_tb_exec_cb(tb, on_exec,
						     QEMU_PLUGIN_CB_NO_REGS, b);
	}
	if (b->vaddr == snap_vaddr)
		qemu_plugin_register_vcpu_tb_exec_cb(tb, on_snap,
						     QEMU_PLUGIN_CB_NO_REGS,
						     NULL);
}

static int parse_arg(const char *arg)
{
	if (!strncmp(arg, "snap=", 5))
		snap_vaddr = strtoull(arg + 5, NULL, 16);
	else if (!strncmp(arg, "out=", 4))
		out_prefix = strdup(arg + 4);
	else if (!strncmp(arg, "vcpu=", 5))
		only_vcpu = atoi(arg + 5);
	else if (!strncmp(arg, "skip=", 5) && nr_skips < MAX_SKIPS)
		skips[nr_skips++] = strtoull(arg + 5, NULL, 16);
	else
		return -1;
	return 0;
}

__attribute__((visibility("default")))
int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
			int argc, char **argv)
{
	int i;

	for (i = 0; i < argc; i++) {
		if (parse_arg(argv[i])) {
			fprintf(stderr, "tcg-insn-profile: bad or extra argument %s\n",
				argv[i]);
			return -1;
		}
	}
	if (!snap_vaddr || !out_prefix) {
		fprintf(stderr, "tcg-insn-profile: needs snap=HEXADDR,out=PATH\n");
		return -1;
	}
	qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
	qemu_plugin_register_atexit_cb(id, on_qemu_exit, NULL);
	return 0;
}
