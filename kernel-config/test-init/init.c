/*
 * Tiny static /init for testing the guest kernel (qemu TCG, qemu -M microvm, rkt's VMM).
 * Exercises what the PVM SYSCALL patch must get right: plain syscalls, fork, execve, signal
 * delivery and sigreturn, a syscall restarted after a signal (SA_RESTART), and exit status.
 * Prints "RKT-TEST-INIT: ok" (or "RKT-TEST-INIT: FAIL <what>") and then reboots the VM,
 * which ends qemu with -no-reboot and rkt's VMM with reboot=k.
 * Run as "/init child" it prints one line and exits 7 (the exec test).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void say(const char *fmt, ...)
{
	char buf[256];
	struct timespec ts;
	va_list ap;
	int n;

	clock_gettime(CLOCK_BOOTTIME, &ts);
	n = snprintf(buf, sizeof(buf), "RKT-TEST-INIT [%ld.%03ld] ", (long)ts.tv_sec, ts.tv_nsec / 1000000);
	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof(buf) - n, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	write(1, buf, n);
}

static void finish(int ok, const char *what)
{
	if (ok)
		say("ok");
	else
		say("FAIL %s (errno %d %s)", what, errno, strerror(errno));
	sync();
	reboot(RB_AUTOBOOT);
	for (;;)
		pause();
}

#define CHECK(cond, what)               \
	do {                            \
		if (!(cond))            \
			finish(0, what); \
	} while (0)

/*
 * With "rkttestdmesg=N" on the kernel command line (N in µs), print from /dev/kmsg every kernel
 * message that came N µs or more after the previous one (where boot time went), and with
 * "initcall_debug" also the initcalls that took N µs or more. Keep "quiet" so those lines stay
 * off the slow serial console during boot.
 */
static void slow_initcalls(void)
{
	const char *env = getenv("rkttestdmesg");
	char rec[1024], prev[128] = "";
	long min, us, ts, prev_ts = 0;
	ssize_t n;
	int fd;

	if (!env)
		return;
	min = atol(env);
	mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
	fd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK);
	if (fd < 0) {
		say("cannot open /dev/kmsg: %s", strerror(errno));
		return;
	}
	while ((n = read(fd, rec, sizeof(rec) - 1)) > 0 || (n < 0 && errno == EPIPE)) {
		char *msg, *p, *nl;

		if (n < 0)
			continue;
		rec[n] = 0;
		msg = strchr(rec, ';');
		p = strchr(rec, ',');
		if (!msg || !p || !(p = strchr(p + 1, ',')))
			continue;
		ts = atol(p + 1);
		msg++;
		if ((nl = strchr(msg, '\n')))
			*nl = 0;
		if (ts - prev_ts >= min)
			say("kmsg gap %ld us before [%ld.%06ld] %.100s (after: %.80s)", ts - prev_ts,
			    ts / 1000000, ts % 1000000, msg, prev);
		prev_ts = ts;
		snprintf(prev, sizeof(prev), "%s", msg);
		p = strstr(msg, " after ");
		if (!p || strncmp(msg, "initcall ", 9) != 0)
			continue;
		us = atol(p + 7);
		if (us >= min) {
			char *sp = strchr(msg + 9, ' ');

			if (sp)
				*sp = 0;
			say("slow initcall %s %ld us", msg + 9, us);
		}
	}
	close(fd);
}

static volatile sig_atomic_t got_usr1, got_usr2;
static void on_usr1(int sig) { got_usr1 = sig; }
static void on_usr2(int sig) { got_usr2 = sig; }

int main(int argc, char **argv)
{
	struct sigaction sa;
	struct utsname u;
	int fd, status, pfd[2];
	pid_t pid, w;
	char c;

	if (argc > 1 && strcmp(argv[1], "child") == 0) {
		say("exec'd child pid %d", getpid());
		return 7;
	}

	/* stdio on the console when the kernel did not open it for us */
	if (fcntl(1, F_GETFD) < 0 && (fd = open("/dev/console", O_RDWR)) >= 0) {
		dup2(fd, 0);
		dup2(fd, 1);
		dup2(fd, 2);
	}
	say("hello from pid %d", getpid());
	CHECK(uname(&u) == 0, "uname");
	say("kernel %s %s", u.release, u.version);
	CHECK(mount("proc", "/proc", "proc", 0, NULL) == 0, "mount /proc");

	/* signal delivery and sigreturn to the interrupted code */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	CHECK(sigaction(SIGUSR1, &sa, NULL) == 0, "sigaction");
	CHECK(kill(getpid(), SIGUSR1) == 0 && got_usr1 == SIGUSR1, "SIGUSR1 to self");
	say("signal handler ran");

	/* fork + execve + exit status */
	pid = fork();
	CHECK(pid >= 0, "fork");
	if (pid == 0) {
		execl("/init", "/init", "child", (char *)NULL);
		_exit(127);
	}
	CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 7, "exec'd child exit status 7");
	say("fork+exec ok");

	/*
	 * Syscall restart: block in read() on a pipe; the child signals us (SA_RESTART), then
	 * writes. read() must be restarted transparently (the kernel rewinds IP by 2 bytes to
	 * the SYSCALL instruction) and return the byte.
	 */
	sa.sa_handler = on_usr2;
	sa.sa_flags = SA_RESTART;
	CHECK(sigaction(SIGUSR2, &sa, NULL) == 0, "sigaction SA_RESTART");
	CHECK(pipe(pfd) == 0, "pipe");
	pid = fork();
	CHECK(pid >= 0, "fork 2");
	if (pid == 0) {
		struct timespec d = { 0, 200 * 1000 * 1000 };
		nanosleep(&d, NULL);
		kill(getppid(), SIGUSR2);
		nanosleep(&d, NULL);
		write(pfd[1], "x", 1);
		_exit(0);
	}
	CHECK(read(pfd[0], &c, 1) == 1 && c == 'x', "restarted read");
	CHECK(got_usr2 == SIGUSR2, "SIGUSR2 handler");
	do
		w = waitpid(pid, &status, 0);
	while (w < 0 && errno == EINTR);
	CHECK(w == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0, "child 2 status");
	say("signal during blocking read, restart ok");

	/* a fatal signal is delivered and reported */
	pid = fork();
	CHECK(pid >= 0, "fork 3");
	if (pid == 0) {
		raise(SIGTERM);
		_exit(0);
	}
	CHECK(waitpid(pid, &status, 0) == pid && WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM,
	      "child killed by SIGTERM");
	say("fatal signal ok");
	slow_initcalls();

	finish(1, NULL);
	return 0;
}
