/*
 * /init for rkt-vmm's boot test: prints a line as soon as it runs, checks that the virtio-rng
 * device is the guest's hardware RNG and delivers bytes, reads and writes a virtio-fs share, talks
 * to the host over virtio-vsock in both directions, then reboots (reboot=k makes the kernel reset through the i8042, which ends
 * the VM with ExitReason::Reset).
 */
#include <cpuid.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <sys/wait.h>
#include <linux/vm_sockets.h>
#include <sys/socket.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <unistd.h>

static void say(const char *s)
{
	write(1, s, strlen(s));
}

static int slurp(const char *path, char *buf, size_t n)
{
	int fd = open(path, O_RDONLY);
	ssize_t r;

	if (fd < 0)
		return -1;
	r = read(fd, buf, n - 1);
	close(fd);
	if (r < 0)
		return -1;
	buf[r] = 0;
	if (r > 0 && buf[r - 1] == '\n')
		buf[r - 1] = 0;
	return (int)r;
}

/* Reads one line (without the newline) from fd. */
static int read_line(int fd, char *buf, size_t n)
{
	size_t i = 0;

	while (i + 1 < n) {
		if (read(fd, buf + i, 1) != 1)
			return -1;
		if (buf[i] == '\n')
			break;
		i++;
	}
	buf[i] = 0;
	return (int)i;
}

/* Guest -> host: connect to the host (CID 2) port 1234, send a line, print the answer. */
static void vsock_client(void)
{
	struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = 2, .svm_port = 1234 };
	char buf[128], line[256];
	int fd = socket(AF_VSOCK, SOCK_STREAM, 0);

	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		say("RKT-VMM-TEST: vsock connect failed\n");
		return;
	}
	write(fd, "ping\n", 5);
	if (read_line(fd, buf, sizeof(buf)) < 0)
		strcpy(buf, "(none)");
	snprintf(line, sizeof(line), "RKT-VMM-TEST: vsock reply=%s\n", buf);
	say(line);
	close(fd);
}

/* PID 1 ignores signals left at their default action, so alarm() needs a handler to interrupt. */
static void on_alarm(int sig)
{
	(void)sig;
}

/* Host -> guest: listen on port 5000, greet the host, print what it says back. */
static void vsock_server(void)
{
	struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = 5000 };
	char buf[128], line[256];
	int l = socket(AF_VSOCK, SOCK_STREAM, 0), c;

	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(l, 1) < 0) {
		say("RKT-VMM-TEST: vsock listen failed\n");
		return;
	}
	say("RKT-VMM-TEST: vsock listening on 5000\n");
	{
		/* No SA_RESTART (glibc's signal() would set it): accept() fails with EINTR. */
		struct sigaction sa = { .sa_handler = on_alarm };

		sigaction(SIGALRM, &sa, NULL);
	}
	alarm(120);
	c = accept(l, NULL, NULL);
	alarm(0);
	if (c < 0) {
		say("RKT-VMM-TEST: vsock accept failed\n");
		return;
	}
	write(c, "hello from guest\n", 17);
	if (read_line(c, buf, sizeof(buf)) < 0)
		strcpy(buf, "(none)");
	snprintf(line, sizeof(line), "RKT-VMM-TEST: vsock host said=%s\n", buf);
	say(line);
	close(c);
	close(l);
}

/* XCR0 as user space sees it (what libc checks before it uses AVX), 0 without OSXSAVE. */
static uint64_t user_xcr0(void)
{
	unsigned int a, b, c, d;
	uint32_t lo, hi;

	__cpuid(1, a, b, c, d);
	if (!(c & (1u << 27)))
		return 0;
	__asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
	return ((uint64_t)hi << 32) | lo;
}

/*
 * Two processes keep their own pattern in ymm7 across context switches. A guest kernel that
 * switches FPU state with FXSAVE while user space may use AVX (PVM with noxsave on a host
 * without CPUID faulting) lets them overwrite each other's upper halves. Returns the number of
 * rounds that saw a foreign value in this process; -1 when AVX is not usable (nothing to leak).
 */
static int ymm_rounds_corrupted(uint64_t tag, int rounds)
{
	int bad = 0, i;

	if ((user_xcr0() & 6) != 6)
		return -1;
	for (i = 0; i < rounds; i++) {
		uint64_t in[4] = { tag, tag, tag, tag + i }, out[4];

		__asm__ volatile("vmovdqu %0, %%ymm7" : : "m"(in) : "xmm7");
		sched_yield();
		usleep(200);
		__asm__ volatile("vmovdqu %%ymm7, %0" : "=m"(out));
		if (memcmp(in, out, sizeof(in)))
			bad++;
	}
	return bad;
}

static void vector_state(void)
{
	char line[160];
	int st = 0, bad;
	pid_t child = fork();

	if (child == 0)
		_exit(ymm_rounds_corrupted(0x1111111111111111ULL, 100) > 0);
	bad = ymm_rounds_corrupted(0x2222222222222222ULL, 100);
	if (child > 0)
		waitpid(child, &st, 0);
	if (bad < 0)
		snprintf(line, sizeof(line),
			 "RKT-VMM-TEST: vector state ok (user XCR0 %#llx: no AVX state)\n",
			 (unsigned long long)user_xcr0());
	else if (bad == 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0)
		snprintf(line, sizeof(line),
			 "RKT-VMM-TEST: vector state ok (user XCR0 %#llx: AVX switched)\n",
			 (unsigned long long)user_xcr0());
	else
		snprintf(line, sizeof(line),
			 "RKT-VMM-TEST: vector state CORRUPTED (%d/100 rounds, child status %#x)\n",
			 bad, st);
	say(line);
}

int main(void)
{
	char buf[256], line[512];
	unsigned char rnd[32];
	int fd, i, zero = 1;
	ssize_t n;

	say("RKT-VMM-TEST: init started\n");
	mkdir("/proc", 0755);
	mkdir("/sys", 0755);
	mkdir("/dev", 0755);
	mount("proc", "/proc", "proc", 0, NULL);
	mount("sysfs", "/sys", "sysfs", 0, NULL);
	mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);

	if (slurp("/sys/devices/virtual/misc/hw_random/rng_current", buf, sizeof(buf)) < 0)
		strcpy(buf, "(unreadable)");
	snprintf(line, sizeof(line), "RKT-VMM-TEST: rng_current=%s\n", buf);
	say(line);

	fd = open("/dev/hwrng", O_RDONLY);
	n = fd < 0 ? -1 : read(fd, rnd, sizeof(rnd));
	for (i = 0; i < n; i++)
		if (rnd[i])
			zero = 0;
	snprintf(line, sizeof(line), "RKT-VMM-TEST: hwrng read %d bytes%s\n", (int)n,
		 n > 0 && !zero ? " nonzero" : "");
	say(line);

	mkdir("/mnt", 0755);
	if (mount("rkt", "/mnt", "virtiofs", 0, NULL) < 0) {
		say("RKT-VMM-TEST: virtiofs mount failed\n");
	} else {
		if (slurp("/mnt/hello.txt", buf, sizeof(buf)) < 0)
			strcpy(buf, "(unreadable)");
		snprintf(line, sizeof(line), "RKT-VMM-TEST: virtiofs hello.txt=%s\n", buf);
		say(line);
		fd = open("/mnt/from-guest.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd >= 0) {
			write(fd, "written by the guest\n", 21);
			close(fd);
		}
		umount("/mnt");
	}

	vector_state();
	vsock_client();
	vsock_server();

	say("RKT-VMM-TEST: rebooting\n");
	sync();
	reboot(RB_AUTOBOOT);
	say("RKT-VMM-TEST: reboot returned\n");
	for (;;)
		pause();
}
