// SPDX-License-Identifier: GPL-2.0
/*
 * A QEMU TCG plugin for `cargo xtask bench-profile`: counts the guest
 * instructions executed in each translation block, and writes the counts
 * of all blocks to OUT.N each time the guest executes the block at
 * address SNAP (the bench marks its windows by calling a syscall there).
 * The last write is at exit. The counts are cumulative: the instructions
 * of a window are the difference of two writes.
 *
 *   -plugin libtcg-insn-profile.so,snap=HEXADDR,out=PATH
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
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id,
				    qemu_plugin_udata_cb_t cb, void *userdata);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

/* one per translation; a block translated again gets another */
struct block {
	uint64_t vaddr;
	uint64_t insns;
};

static struct block **blocks;
static size_t nr_blocks, max_blocks;
static uint64_t snap_vaddr;
static const char *out_prefix;
static unsigned int nr_writes;

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
	fclose(f);
}

static void on_snap(unsigned int vcpu_index, void *userdata)
{
	write_counts();
}

static void on_qemu_exit(qemu_plugin_id_t id, void *userdata)
{
	write_counts();
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
	qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64,
						 &b->insns,
						 qemu_plugin_tb_n_insns(tb));
	if (b->vaddr == snap_vaddr)
		qemu_plugin_register_vcpu_tb_exec_cb(tb, on_snap,
						     QEMU_PLUGIN_CB_NO_REGS,
						     NULL);
}

__attribute__((visibility("default")))
int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
			int argc, char **argv)
{
	int i;

	for (i = 0; i < argc; i++) {
		if (!strncmp(argv[i], "snap=", 5))
			snap_vaddr = strtoull(argv[i] + 5, NULL, 16);
		else if (!strncmp(argv[i], "out=", 4))
			out_prefix = strdup(argv[i] + 4);
	}
	if (!snap_vaddr || !out_prefix) {
		fprintf(stderr, "tcg-insn-profile: needs snap=HEXADDR,out=PATH\n");
		return -1;
	}
	qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
	qemu_plugin_register_atexit_cb(id, on_qemu_exit, NULL);
	return 0;
}
