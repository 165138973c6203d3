// SPDX-License-Identifier: MIT
/*
 * A mixed IORING_OP_SENDMSG_ZC from a 32-bit process: xtask builds it with
 * `gcc -m32 -static` (and natively, for comparison), and
 * rust-tests/tests/compat32.rs runs both in the guest, where the kernel
 * takes the compat paths for the 32-bit one (struct compat_msghdr, compat
 * iovecs, a 32-bit pointer widened into sqe->zc_iov_attr).
 *
 * No liburing: the ring is set up with the raw syscalls, so that nothing
 * between the test and the kernel is 64-bit. Prints "compat32: ok" and
 * exits 0 when the bytes and the CQEs are right; otherwise says what is
 * wrong and exits 1.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#include <linux/io_uring.h>

#define BUF_LEN		(64 * 1024)
#define NR_IOVS		5

struct ring {
	int fd;
	unsigned int *sq_tail, *sq_mask, *sq_array;
	unsigned int *cq_head, *cq_tail, *cq_mask;
	struct io_uring_sqe *sqes;
	struct io_uring_cqe *cqes;
};

static void die(const char *what)
{
	printf("compat32: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void fail(const char *what)
{
	printf("compat32: %s\n", what);
	exit(1);
}

static void ring_init(struct ring *r)
{
	struct io_uring_params p;
	char *sq, *cq;

	memset(&p, 0, sizeof(p));
	r->fd = syscall(__NR_io_uring_setup, 4, &p);
	if (r->fd < 0)
		die("io_uring_setup");
	if (!(p.features & IORING_FEAT_SEND_ZC_IOV_ATTR))
		fail("IORING_FEAT_SEND_ZC_IOV_ATTR not announced");
	sq = mmap(NULL, p.sq_off.array + p.sq_entries * sizeof(unsigned int),
		  PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, IORING_OFF_SQ_RING);
	cq = mmap(NULL, p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe),
		  PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, IORING_OFF_CQ_RING);
	r->sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe),
		       PROT_READ | PROT_WRITE, MAP_SHARED, r->fd, IORING_OFF_SQES);
	if (sq == MAP_FAILED || cq == MAP_FAILED || r->sqes == MAP_FAILED)
		die("mmap of the rings");
	r->sq_tail = (unsigned int *)(sq + p.sq_off.tail);
	r->sq_mask = (unsigned int *)(sq + p.sq_off.ring_mask);
	r->sq_array = (unsigned int *)(sq + p.sq_off.array);
	r->cq_head = (unsigned int *)(cq + p.cq_off.head);
	r->cq_tail = (unsigned int *)(cq + p.cq_off.tail);
	r->cq_mask = (unsigned int *)(cq + p.cq_off.ring_mask);
	r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
}

static void ring_submit(struct ring *r, const struct io_uring_sqe *sqe)
{
	unsigned int tail = *r->sq_tail;
	unsigned int idx = tail & *r->sq_mask;

	r->sqes[idx] = *sqe;
	r->sq_array[idx] = idx;
	__atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
	if (syscall(__NR_io_uring_enter, r->fd, 1, 0, 0, NULL, 0) != 1)
		die("io_uring_enter (submit)");
}

/* fills *cqe (struct io_uring_cqe has a flexible array: no return by value) */
static void ring_wait(struct ring *r, struct io_uring_cqe *cqe)
{
	unsigned int head = *r->cq_head;

	while (__atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE) == head) {
		if (syscall(__NR_io_uring_enter, r->fd, 0, 1,
			    IORING_ENTER_GETEVENTS, NULL, 0) < 0 && errno != EINTR)
			die("io_uring_enter (wait)");
	}
	*cqe = r->cqes[head & *r->cq_mask];
	__atomic_store_n(r->cq_head, head + 1, __ATOMIC_RELEASE);
}

static void fill(unsigned char *p, size_t len, unsigned char seed)
{
	size_t i;

	for (i = 0; i < len; i++)
		p[i] = (unsigned char)(seed + i * 7 + i / 251);
}

static void tcp_pair(int *tx, int *rx)
{
	struct sockaddr_in addr = { .sin_family = AF_INET };
	socklen_t len = sizeof(addr);
	int lfd = socket(AF_INET, SOCK_STREAM, 0);

	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) ||
	    listen(lfd, 1) || getsockname(lfd, (struct sockaddr *)&addr, &len))
		die("listener");
	*tx = socket(AF_INET, SOCK_STREAM, 0);
	if (*tx < 0 || connect(*tx, (struct sockaddr *)&addr, sizeof(addr)))
		die("connect");
	*rx = accept(lfd, NULL, NULL);
	if (*rx < 0)
		die("accept");
	close(lfd);
}

static void receive(int rx, unsigned char *buf, size_t len)
{
	size_t got = 0;

	while (got < len) {
		ssize_t n = recv(rx, buf + got, len - got, 0);

		if (n <= 0)
			die("recv");
		got += n;
	}
}

int main(void)
{
	static unsigned char hdr0[24], hdr1[24], user[3000];
	struct io_uring_zc_iov_attr attrs[NR_IOVS];
	struct iovec regs[2], iov[NR_IOVS];
	struct io_uring_cqe result, notif;
	unsigned char *bufs[2], *wire, *expected;
	struct io_uring_sqe sqe;
	struct msghdr msg;
	size_t total = 0, off = 0;
	struct ring r;
	int i, tx, rx;

	ring_init(&r);
	for (i = 0; i < 2; i++) {
		bufs[i] = mmap(NULL, BUF_LEN, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (bufs[i] == MAP_FAILED)
			die("mmap of a buffer");
		fill(bufs[i], BUF_LEN, 40 + i);
		regs[i].iov_base = bufs[i];
		regs[i].iov_len = BUF_LEN;
	}
	if (syscall(__NR_io_uring_register, r.fd, IORING_REGISTER_BUFFERS, regs, 2))
		die("IORING_REGISTER_BUFFERS");
	fill(hdr0, sizeof(hdr0), 1);
	fill(hdr1, sizeof(hdr1), 2);
	fill(user, sizeof(user), 3);

	/* COPY header, FIXED from buffer 0, USER, COPY header, FIXED from 1 */
	iov[0] = (struct iovec){ hdr0, sizeof(hdr0) };
	iov[1] = (struct iovec){ bufs[0] + 100, 5000 };
	iov[2] = (struct iovec){ user, sizeof(user) };
	iov[3] = (struct iovec){ hdr1, sizeof(hdr1) };
	iov[4] = (struct iovec){ bufs[1] + 4093, 2000 };
	memset(attrs, 0, sizeof(attrs));
	attrs[0].mode = IORING_ZC_IOV_COPY;
	attrs[1].mode = IORING_ZC_IOV_FIXED;
	attrs[1].buf_index = 0;
	attrs[2].mode = IORING_ZC_IOV_USER;
	attrs[3].mode = IORING_ZC_IOV_COPY;
	attrs[4].mode = IORING_ZC_IOV_FIXED;
	attrs[4].buf_index = 1;
	for (i = 0; i < NR_IOVS; i++)
		total += iov[i].iov_len;
	expected = malloc(total);
	wire = malloc(total);
	if (!expected || !wire)
		fail("out of memory");
	for (i = 0; i < NR_IOVS; i++) {
		memcpy(expected + off, iov[i].iov_base, iov[i].iov_len);
		off += iov[i].iov_len;
	}

	tcp_pair(&tx, &rx);
	memset(&msg, 0, sizeof(msg));
	msg.msg_iov = iov;
	msg.msg_iovlen = NR_IOVS;
	memset(&sqe, 0, sizeof(sqe));
	sqe.opcode = IORING_OP_SENDMSG_ZC;
	sqe.fd = tx;
	sqe.addr = (uintptr_t)&msg;
	sqe.ioprio = IORING_SEND_ZC_IOV_ATTR;
	sqe.zc_iov_attr = (uintptr_t)attrs;
	sqe.user_data = 0x32;
	ring_submit(&r, &sqe);

	ring_wait(&r, &result);
	if (result.user_data != 0x32 || result.res != (int)total) {
		printf("compat32: result res %d (want %zu), user_data %llu\n",
		       result.res, total, (unsigned long long)result.user_data);
		return 1;
	}
	if (!(result.flags & IORING_CQE_F_MORE))
		fail("result without IORING_CQE_F_MORE");
	receive(rx, wire, total);
	ring_wait(&r, &notif);
	if (notif.user_data != 0x32 || !(notif.flags & IORING_CQE_F_NOTIF) ||
	    (notif.flags & IORING_CQE_F_MORE))
		fail("no well-formed notification after the result");
	if (memcmp(wire, expected, total))
		fail("the bytes on the wire differ from the iovecs");
	printf("compat32: ok, %zu bytes in %d iovecs, pointer size %zu\n",
	       total, NR_IOVS, sizeof(void *));
	return 0;
}
