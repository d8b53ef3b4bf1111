/*
 * /init for rkt-vmm's snapshot test. Mounts /proc, /sys and /dev, listens on vsock port 5000,
 * says "SNAP: waiting" on the console (the VMM pauses and snapshots the VM there) and then
 * serves one host connection: the host sends "go <unix time ns> <64 hex chars of entropy>\n";
 * the init credits the entropy, reseeds the CRNG, sets the wall clock, and answers with one
 * line "boot_id=... urandom=... hwrng=... clock_ns=...", then reboots. This is the per-pod
 * step a restored template runs before anything else.
 */
#include <fcntl.h>
#include <linux/random.h>
#include <linux/vm_sockets.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void say(const char *s)
{
	write(1, s, strlen(s));
}

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

static void hex_of(const char *path, char *out, size_t nbytes)
{
	unsigned char b[64];
	int fd = open(path, O_RDONLY);
	ssize_t r = fd < 0 ? -1 : read(fd, b, nbytes);
	size_t i;

	if (fd >= 0)
		close(fd);
	if (r != (ssize_t)nbytes) {
		strcpy(out, "none");
		return;
	}
	for (i = 0; i < nbytes; i++)
		sprintf(out + 2 * i, "%02x", b[i]);
}

static void slurp(const char *path, char *buf, size_t n)
{
	int fd = open(path, O_RDONLY);
	ssize_t r = fd < 0 ? -1 : read(fd, buf, n - 1);

	if (fd >= 0)
		close(fd);
	if (r <= 0) {
		strcpy(buf, "none");
		return;
	}
	buf[r] = 0;
	if (buf[r - 1] == '\n')
		buf[r - 1] = 0;
}

/* Credits 32 bytes of host entropy and forces a CRNG reseed, so this copy of the VM no longer
 * produces the random numbers every other copy of the snapshot would. */
static int reseed(const char *hex)
{
	struct {
		int entropy_count;
		int buf_size;
		unsigned char buf[32];
	} e = { 256, 32, { 0 } };
	int i, fd;

	if (strlen(hex) < 64)
		return -1;
	for (i = 0; i < 32; i++) {
		unsigned int v;

		if (sscanf(hex + 2 * i, "%2x", &v) != 1)
			return -1;
		e.buf[i] = (unsigned char)v;
	}
	fd = open("/dev/urandom", O_WRONLY);
	if (fd < 0)
		return -1;
	if (ioctl(fd, RNDADDENTROPY, &e) < 0 || ioctl(fd, RNDRESEEDCRNG) < 0) {
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

int main(void)
{
	struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = 5000 };
	char line[256], out[512], boot_id[64], ur[40], hw[40], seed[80];
	unsigned long long ns, before;
	struct timespec ts;
	int l, c;

	mount("proc", "/proc", "proc", 0, NULL);
	mount("sysfs", "/sys", "sysfs", 0, NULL);
	mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
	l = socket(AF_VSOCK, SOCK_STREAM, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(l, 1) < 0) {
		say("SNAP: vsock listen failed\n");
		reboot(RB_AUTOBOOT);
	}
	say("SNAP: waiting\n");
	/* After a restore the VMM resets the vsock transport, which also resets a connection
	 * accepted before the guest saw the reset: then wait for the host's next try. */
	for (;;) {
		c = accept(l, NULL, NULL);
		if (c < 0)
			continue;
		if (read_line(c, line, sizeof(line)) >= 0 &&
		    sscanf(line, "go %llu %70s", &ns, seed) == 2)
			break;
		say("SNAP: connection without go, waiting again\n");
		close(c);
	}
	clock_gettime(CLOCK_REALTIME, &ts);
	before = (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
	ts.tv_sec = ns / 1000000000ULL;
	ts.tv_nsec = ns % 1000000000ULL;
	clock_settime(CLOCK_REALTIME, &ts);
	if (reseed(seed) < 0)
		say("SNAP: reseed failed\n");
	slurp("/proc/sys/kernel/random/boot_id", boot_id, sizeof(boot_id));
	hex_of("/dev/urandom", ur, 16);
	hex_of("/dev/hwrng", hw, 16);
	clock_gettime(CLOCK_REALTIME, &ts);
	snprintf(out, sizeof(out), "boot_id=%s urandom=%s hwrng=%s clock_ns=%llu before_ns=%llu\n",
		 boot_id, ur, hw,
		 (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec, before);
	write(c, out, strlen(out));
	say("SNAP: ");
	say(out);
	close(c);
	sleep(1);
	reboot(RB_AUTOBOOT);
	return 0;
}
