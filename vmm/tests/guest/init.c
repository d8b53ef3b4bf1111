/*
 * /init for rkt-vmm's boot test: prints a line as soon as it runs, checks that the virtio-rng
 * device is the guest's hardware RNG and delivers bytes, then reboots (reboot=k makes the kernel
 * reset through the i8042, which ends the VM with ExitReason::Reset).
 */
#include <fcntl.h>
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

	say("RKT-VMM-TEST: rebooting\n");
	sync();
	reboot(RB_AUTOBOOT);
	say("RKT-VMM-TEST: reboot returned\n");
	for (;;)
		pause();
}
