/*
 * attack: Berth's isolation attack cases, run INSIDE a sandbox.
 *
 *   attack CASE [KEY=VALUE ...]
 *
 * Each case tries one way out of the sandbox and decides by itself whether it was
 * contained (the operation was denied, had no effect, or only affected the sandbox) or
 * escaped. It prints evidence lines ("evidence: ..."), one "escaped: ..." line per
 * successful escape, and exactly one verdict line at the end:
 *
 *   RESULT: CONTAINED
 *   RESULT: ESCAPED (N)
 *
 * Statically linked (gcc -static) so the image needs nothing but this file. Every
 * case is bounded in time (alarm) and in what it leaves behind: resource bombs clean
 * up after themselves, nothing writes to a host path even when it could (write access
 * is tested by opening only, or by writing the same value back).
 *
 * Arguments the test passes (all optional, case dependent):
 *   secret=S          the victim's /home secret, or the host marker's content
 *   paths=A,B         host paths that must stay unreadable (victim /home on the host...)
 *   pids=A,B          host pids of other tenants and platform daemons
 *   ports=A,B         TCP ports of platform daemons / host listeners on the worker
 *   addrs=A,B         IPv4 addresses to try those ports on (127.0.0.1, host addresses...)
 *   sock=PATH         a Unix socket path on the host (sandboxd's)
 *   abstract=NAME     an abstract Unix socket name bound by a host process
 *   banner=B          what a host listener says first (to tell it from the sandbox's own)
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <linux/reboot.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/klog.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/swap.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <sys/timex.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <grp.h>
#include <time.h>
#include <unistd.h>

static int g_escapes;
static int g_argc;
static char **g_argv;

static void evidence(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("evidence: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
}

static void escaped(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("escaped: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    g_escapes++;
}

static const char *arg(const char *key)
{
    size_t n = strlen(key);
    for (int i = 2; i < g_argc; i++)
        if (strncmp(g_argv[i], key, n) == 0 && g_argv[i][n] == '=')
            return g_argv[i] + n + 1;
    return NULL;
}

/* Calls f(item) for each comma-separated item of argument key. */
static void each(const char *key, void (*f)(const char *))
{
    const char *v = arg(key);
    if (!v || !*v)
        return;
    char *copy = strdup(v), *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
        f(t);
    free(copy);
}

/* Reads up to cap-1 bytes of path; returns bytes read or -errno. */
static ssize_t slurp(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t got = 0;
    while (got + 1 < cap) {
        ssize_t r = read(fd, buf + got, cap - 1 - got);
        if (r < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    buf[got] = 0;
    close(fd);
    return (ssize_t)got;
}

/* Does the file at path (read through whatever route) contain the secret? */
static int leaks_secret(const char *path)
{
    const char *secret = arg("secret");
    char buf[4096];
    ssize_t n = slurp(path, buf, sizeof buf);
    if (n < 0) {
        evidence("read %s: %s", path, strerror((int)-n));
        return 0;
    }
    if (secret && *secret && strstr(buf, secret)) {
        escaped("read the secret through %s", path);
        return 1;
    }
    evidence("read %s: %zd bytes, no secret", path, n);
    return 0;
}

/* errno of a raw syscall attempt, printing it; 0 if it succeeded. */
static int denied(const char *what, long rc)
{
    if (rc < 0) {
        int e = errno;
        evidence("%s: %s", what, strerror(e));
        return e;
    }
    evidence("%s: succeeded", what);
    return 0;
}

static int is_permission_error(int e)
{
    return e == EPERM || e == EACCES || e == ENOSYS || e == EROFS;
}

/* "Own" = belongs to this sandbox: in our pid namespace and, when its environment
 * says (a complete BERTH_SITE entry; a process in the middle of exec may show a
 * partial one), of our site. */
static int same_site(const char *pid)
{
    char path[64], ns[64] = "", own_ns[64] = "";
    snprintf(path, sizeof path, "/proc/%s/ns/pid", pid);
    ssize_t l = readlink(path, ns, sizeof ns - 1);
    if (readlink("/proc/self/ns/pid", own_ns, sizeof own_ns - 1) > 0 && l > 0 &&
        strcmp(ns, own_ns) != 0)
        return 0;
    char buf[16384];
    snprintf(path, sizeof path, "/proc/%s/environ", pid);
    ssize_t n = slurp(path, buf, sizeof buf);
    const char *mine = getenv("BERTH_SITE");
    if (n <= 0 || !mine)
        return 1; /* kernel threads have no environ; unreadable is no evidence */
    for (char *p = buf; p < buf + n; p += strlen(p) + 1)
        if (strncmp(p, "BERTH_SITE=", 11) == 0 && p + strlen(p) < buf + n)
            return strcmp(p + 11, mine) == 0;
    return 1;
}

/* Is the command line (argv[0] first) one of Berth's platform daemons? */
static int is_platform(const char *cmd)
{
    const char *a0 = cmd, *slash;
    size_t len = strcspn(cmd, " ");
    for (const char *q = cmd; q < cmd + len && (slash = memchr(q, '/', (size_t)(cmd + len - q)));
         q = slash + 1)
        a0 = slash + 1;
    return strncmp(a0, "berth", 5) == 0;
}

static int is_pid(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

/* ---------------------------------------------------------------- cases */

static void try_path_secret(const char *p) { leaks_secret(p); }

static void try_proc_root_path(const char *p)
{
    char buf[4200];
    snprintf(buf, sizeof buf, "/proc/1/root%s", p);
    leaks_secret(buf);
    snprintf(buf, sizeof buf, "/proc/self/root%s", p);
    leaks_secret(buf);
    snprintf(buf, sizeof buf, "/proc/1/cwd/../../../../../..%s", p);
    leaks_secret(buf);
}

/* Another site's /home: by its host path, through every visible process's root,
 * and by searching our own mounts for it. */
static void case_home_other_site(void)
{
    each("paths", try_path_secret);
    each("paths", try_proc_root_path);
    DIR *d = opendir("/proc");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (!is_pid(e->d_name))
            continue;
        char p[300];
        snprintf(p, sizeof p, "/proc/%s/root/home/secret", e->d_name);
        if (access(p, F_OK) == 0)
            leaks_secret(p);
    }
    if (d)
        closedir(d);
    leaks_secret("/home/secret");
    leaks_secret("/home/../home/secret");
}

static int same_inode(const char *a, const char *b)
{
    struct stat sa, sb;
    if (stat(a, &sa) || stat(b, &sb))
        return 0;
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

static void proc_root_case(const char *root)
{
    if (same_inode(root, "/"))
        evidence("%s is this sandbox's own root", root);
    else
        escaped("%s is not this sandbox's root", root);
    char p[4200];
    snprintf(p, sizeof p, "%s/../../../../..", root);
    if (!same_inode(p, "/"))
        escaped("%s leads above the sandbox root", p);
    else
        evidence("%s/.. stays at the sandbox root", root);
    each("paths", try_path_secret);
    const char *v = arg("paths");
    if (v) {
        char *copy = strdup(v), *save = NULL;
        for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            snprintf(p, sizeof p, "%s/../../..%s", root, t);
            leaks_secret(p);
        }
        free(copy);
    }
}

static void case_proc1_root(void) { proc_root_case("/proc/1/root"); }
static void case_proc_self_root(void) { proc_root_case("/proc/self/root"); }

static void case_chroot_breakout(void)
{
    struct stat root0;
    stat("/", &root0);
    int pipefd[2];
    if (pipe(pipefd))
        return;
    pid_t pid = fork();
    if (pid == 0) {
        close(pipefd[0]);
        dup2(pipefd[1], 1);
        mkdir("/tmp/jail", 0700);
        if (chroot("/tmp/jail") != 0) {
            printf("evidence: chroot /tmp/jail: %s\n", strerror(errno));
            _exit(0);
        }
        for (int i = 0; i < 64; i++)
            if (chdir("..")) break;
        if (chroot(".")) {
            printf("evidence: chroot .: %s\n", strerror(errno));
        }
        struct stat st;
        stat("/", &st);
        if (st.st_dev != root0.st_dev || st.st_ino != root0.st_ino)
            printf("escaped: chroot + chdir .. reached a root that is not the sandbox's\n");
        else
            printf("evidence: chroot breakout ends at the sandbox's own root\n");
        fflush(stdout);
        _exit(0);
    }
    close(pipefd[1]);
    char buf[1024];
    ssize_t n;
    while ((n = read(pipefd[0], buf, sizeof buf - 1)) > 0) {
        buf[n] = 0;
        fputs(buf, stdout);
        if (strstr(buf, "escaped:"))
            g_escapes++;
    }
    waitpid(pid, NULL, 0);
    rmdir("/tmp/jail");
    each("paths", try_path_secret);
}

static void case_see_processes(void)
{
    int own = 0, foreign = 0;
    DIR *d = opendir("/proc");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (!is_pid(e->d_name))
            continue;
        char p[300], cmd[256];
        snprintf(p, sizeof p, "/proc/%s/cmdline", e->d_name);
        ssize_t n = slurp(p, cmd, sizeof cmd);
        for (ssize_t i = 0; i + 1 < n; i++)
            if (!cmd[i]) cmd[i] = ' ';
        if (n > 0 && (is_platform(cmd) || !same_site(e->d_name))) {
            foreign++;
            escaped("sees a process that is not this site's: pid %s %s", e->d_name, cmd);
        } else {
            own++;
        }
    }
    if (d)
        closedir(d);
    evidence("%d processes visible, %d foreign", own + foreign, foreign);
    if (own + foreign > 64)
        escaped("sees %d processes: more than one sandbox could hold", own + foreign);
}

static void try_signal(const char *pid)
{
    int p = atoi(pid);
    char path[64], cmd[256] = "";
    snprintf(path, sizeof path, "/proc/%d/cmdline", p);
    if (kill(p, 0) == 0) {
        if (slurp(path, cmd, sizeof cmd) > 0 && same_site(pid) && !is_platform(cmd))
            evidence("host pid %d names one of our own processes (%s): not the host's", p, cmd);
        else
            escaped("can signal host pid %d (%s)", p, cmd);
    } else {
        evidence("kill(%d, 0): %s", p, strerror(errno));
    }
    int fd = (int)syscall(SYS_pidfd_open, p, 0);
    if (fd >= 0) {
        if (slurp(path, cmd, sizeof cmd) > 0 && same_site(pid) && !is_platform(cmd))
            evidence("pidfd_open(%d) opened one of our own processes", p);
        else
            escaped("pidfd_open(%d) opened a host process", p);
        close(fd);
    }
}

static void case_signal_others(void)
{
    each("pids", try_signal);
    /* kill(-1) reaches every process we may signal: count who answers signal 0. */
    denied("kill(-1, 0)", kill(-1, 0));
}

static void try_ptrace(const char *pid)
{
    int p = atoi(pid);
    char path[64], cmd[256] = "";
    snprintf(path, sizeof path, "/proc/%d/cmdline", p);
    int own = slurp(path, cmd, sizeof cmd) > 0 && same_site(pid) && !is_platform(cmd);
    if (ptrace(PTRACE_SEIZE, p, 0, 0) == 0) {
        ptrace(PTRACE_DETACH, p, 0, 0);
        if (own)
            evidence("PTRACE_SEIZE %d attached one of our own processes", p);
        else
            escaped("PTRACE_SEIZE attached host pid %d", p);
    } else {
        evidence("PTRACE_SEIZE %d: %s", p, strerror(errno));
    }
    char buf[16];
    struct iovec local = {buf, sizeof buf}, remote = {(void *)0x400000, sizeof buf};
    if (process_vm_readv(p, &local, 1, &remote, 1, 0) >= 0 && !own)
        escaped("process_vm_readv read memory of host pid %d", p);
}

static void case_ptrace_others(void) { each("pids", try_ptrace); }

/* CVE-2019-5736: reach a host binary (the runtime) through /proc/<pid>/exe and
 * open it for writing. Every visible process's exe must be a file of our own
 * root filesystem. Nothing is ever written. */
static void case_proc_exe_overwrite(void)
{
    struct stat own;
    stat("/bin/attack", &own);
    DIR *d = opendir("/proc");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (!is_pid(e->d_name))
            continue;
        char p[300], target[512];
        snprintf(p, sizeof p, "/proc/%s/exe", e->d_name);
        ssize_t n = readlink(p, target, sizeof target - 1);
        if (n < 0)
            continue;
        target[n] = 0;
        struct stat st;
        if (stat(p, &st) != 0)
            continue;
        struct stat named;
        int reachable = stat(target, &named) == 0 && named.st_dev == st.st_dev &&
                        named.st_ino == st.st_ino;
        int fd = open(p, O_WRONLY | O_CLOEXEC);
        int werr = fd < 0 ? errno : 0;
        if (fd >= 0)
            close(fd);
        if (!reachable) {
            escaped("pid %s runs %s, a binary outside this sandbox's root (open for write: %s)",
                    e->d_name, target, werr ? strerror(werr) : "succeeded");
        } else {
            evidence("pid %s exe %s is in the sandbox root (open for write: %s)", e->d_name,
                     target, werr ? strerror(werr) : "succeeded, own file");
        }
    }
    if (d)
        closedir(d);
    int fd = open("/proc/self/exe", O_WRONLY | O_CLOEXEC);
    evidence("open /proc/self/exe for writing: %s", fd < 0 ? strerror(errno) : "succeeded");
    if (fd >= 0)
        close(fd);
}

/* Leaked host descriptors (CVE-2024-21626): every fd of every visible process must
 * be a pipe, socket, anonymous inode or a file reachable inside the sandbox under its
 * name; a leaked directory is the way out, so try ".." through it. */
static int g_log_noted;

/* Pid 1's stdout/stderr when they are regular files: the log the agent opened for
 * this sandbox. A descriptor to that file is the sandbox's own output. */
static int is_own_log(const struct stat *st)
{
    for (int fd = 1; fd <= 2; fd++) {
        char p[64];
        struct stat o;
        snprintf(p, sizeof p, "/proc/1/fd/%d", fd);
        if (stat(p, &o) == 0 && S_ISREG(o.st_mode) && S_ISREG(st->st_mode) &&
            o.st_dev == st->st_dev && o.st_ino == st->st_ino)
            return 1;
    }
    return 0;
}

static void check_fds_of(const char *pid)
{
    char dir[300];
    snprintf(dir, sizeof dir, "/proc/%s/fd", pid);
    DIR *d = opendir(dir);
    struct dirent *e;
    int count = 0;
    while (d && (e = readdir(d))) {
        if (!is_pid(e->d_name))
            continue;
        count++;
        char p[600], target[512];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        ssize_t n = readlink(p, target, sizeof target - 1);
        if (n < 0)
            continue;
        target[n] = 0;
        if (target[0] != '/')
            continue; /* pipe:[..], socket:[..], anon_inode:.. */
        struct stat st, named;
        if (stat(p, &st) != 0)
            continue;
        if (stat(target, &named) == 0 && named.st_dev == st.st_dev && named.st_ino == st.st_ino)
            continue;
        if (strstr(target, "(deleted)"))
            continue;
        if (is_own_log(&st)) {
            if (!g_log_noted++)
                evidence("fds to %s: this sandbox's own stdout/stderr log, a host file opened "
                         "for it by the agent (not a directory)", target);
            continue;
        }
        escaped("pid %s fd %s -> %s is not reachable inside the sandbox (leaked from the host)",
                pid, e->d_name, target);
        if (S_ISDIR(st.st_mode)) {
            char up[700];
            snprintf(up, sizeof up, "%s/../../../../../..", p);
            evidence("through the leaked directory: %s", up);
            const char *v = arg("paths");
            if (v) {
                char *copy = strdup(v), *save = NULL;
                for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                    char q[1400];
                    snprintf(q, sizeof q, "%s%s", up, t);
                    leaks_secret(q);
                }
                free(copy);
            }
        }
    }
    if (d)
        closedir(d);
    if (count)
        evidence("pid %s: %d descriptors checked", pid, count);
}

static void case_leaked_fds(void)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (is_pid(e->d_name))
            check_fds_of(e->d_name);
    if (d)
        closedir(d);
    /* Our own fds beyond 0,1,2 (the CGI gets only those). */
    for (int fd = 3; fd < 64; fd++) {
        char p[64], t[256];
        snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(p, t, sizeof t - 1);
        if (n > 0) {
            t[n] = 0;
            evidence("own fd %d -> %s", fd, t);
        }
    }
}

static void case_cwd_fd(void)
{
    /* Every process's cwd must be reachable inside the sandbox. */
    DIR *d = opendir("/proc");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (!is_pid(e->d_name))
            continue;
        char p[300], target[512];
        snprintf(p, sizeof p, "/proc/%s/cwd", e->d_name);
        ssize_t n = readlink(p, target, sizeof target - 1);
        if (n < 0)
            continue;
        target[n] = 0;
        if (!same_inode(p, target))
            escaped("pid %s has cwd %s, outside the sandbox's root", e->d_name, target);
        else
            evidence("pid %s cwd %s is inside", e->d_name, target);
    }
    if (d)
        closedir(d);
    /* chdir through every descriptor number, then climb. */
    for (int fd = 0; fd < 32; fd++) {
        char p[64];
        snprintf(p, sizeof p, "/proc/self/fd/%d", fd);
        if (chdir(p) != 0)
            continue;
        char cwd[512];
        if (!getcwd(cwd, sizeof cwd))
            escaped("chdir %s: cwd is unreachable (%s): outside the root", p, strerror(errno));
        else
            evidence("chdir %s -> %s", p, cwd);
        if (chdir("/")) {
        }
    }
    /* The same for pid 1's descriptors. */
    for (int fd = 0; fd < 32; fd++) {
        char p[64];
        snprintf(p, sizeof p, "/proc/1/fd/%d", fd);
        if (chdir(p) != 0)
            continue;
        char cwd[512];
        if (!getcwd(cwd, sizeof cwd))
            escaped("chdir %s: cwd is unreachable: outside the root", p);
        if (chdir("/")) {
        }
    }
}

static void case_mount(void)
{
    mkdir("/tmp/m", 0700);
    int e = denied("mount tmpfs /tmp/m", mount("tmpfs", "/tmp/m", "tmpfs", 0, "size=1m"));
    if (!e) {
        escaped("mount works: the sandbox holds CAP_SYS_ADMIN over its mounts");
        umount2("/tmp/m", MNT_DETACH);
    }
    e = denied("mount proc /tmp/m", mount("proc", "/tmp/m", "proc", 0, NULL));
    if (!e) {
        escaped("mounted a fresh procfs (unmasked /proc)");
        umount2("/tmp/m", MNT_DETACH);
    }
    e = denied("remount / read-write bind", mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND, NULL));
    if (!e)
        escaped("remount of / succeeded");
    rmdir("/tmp/m");
}

static void case_umount(void)
{
    /* Unmounting a masked path would reveal the host's /proc/kcore, /proc/keys... */
    const char *masked[] = {"/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug",
                            "/sys/firmware", "/proc/sys", "/proc/sysrq-trigger"};
    for (size_t i = 0; i < sizeof masked / sizeof *masked; i++) {
        char what[128];
        snprintf(what, sizeof what, "umount %s", masked[i]);
        if (!denied(what, umount2(masked[i], MNT_DETACH)))
            escaped("unmounted the mask/read-only mount on %s", masked[i]);
    }
}

static void case_pivot_root(void)
{
    mkdir("/tmp/pr", 0700);
    int e = denied("pivot_root(/, /tmp/pr)", syscall(SYS_pivot_root, "/", "/tmp/pr"));
    if (!e)
        escaped("pivot_root succeeded");
    e = denied("pivot_root(., .)", syscall(SYS_pivot_root, ".", "."));
    if (!e)
        escaped("pivot_root succeeded");
    rmdir("/tmp/pr");
}

static void write_file(const char *path, const char *s)
{
    int fd = open(path, O_WRONLY);
    if (fd >= 0) {
        if (write(fd, s, strlen(s)) < 0)
            evidence("write %s: %s", path, strerror(errno));
        close(fd);
    }
}

/* unshare(CLONE_NEWUSER) gives full capabilities over new namespaces; they must
 * not reach anything the sandbox could not reach before. */
static void case_unshare_userns(void)
{
    int pipefd[2];
    if (pipe(pipefd))
        return;
    pid_t pid = fork();
    if (pid == 0) {
        close(pipefd[0]);
        dup2(pipefd[1], 1);
        uid_t uid = getuid();
        gid_t gid = getgid();
        if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) {
            printf("evidence: unshare(CLONE_NEWUSER|CLONE_NEWNS): %s\n", strerror(errno));
            _exit(0);
        }
        printf("evidence: unshare(CLONE_NEWUSER|CLONE_NEWNS) succeeded\n");
        char m[64];
        write_file("/proc/self/setgroups", "deny");
        snprintf(m, sizeof m, "0 %u 1", uid);
        write_file("/proc/self/uid_map", m);
        snprintf(m, sizeof m, "0 %u 1", gid);
        write_file("/proc/self/gid_map", m);
        /* Masked paths are locked: unmounting them must fail even now. */
        if (umount2("/proc/kcore", MNT_DETACH) == 0)
            printf("escaped: unmounted the mask on /proc/kcore inside a new user namespace\n");
        else
            printf("evidence: umount /proc/kcore in new userns: %s\n", strerror(errno));
        if (mount("none", "/proc/sys", NULL, MS_REMOUNT | MS_BIND, NULL) == 0)
            printf("escaped: made /proc/sys writable inside a new user namespace\n");
        else
            printf("evidence: remount /proc/sys rw in new userns: %s\n", strerror(errno));
        mkdir("/tmp/u", 0700);
        if (mount("sysfs", "/tmp/u", "sysfs", 0, NULL) == 0) {
            printf("evidence: mounted sysfs inside the new user namespace (own netns view)\n");
            umount2("/tmp/u", MNT_DETACH);
        }
        if (mount("/", "/tmp/u", NULL, MS_BIND | MS_REC, NULL) == 0) {
            struct stat a, b;
            stat("/tmp/u", &a);
            stat("/", &b);
            printf("%s: bind of / in new userns is %s\n",
                   (a.st_ino == b.st_ino && a.st_dev == b.st_dev) ? "evidence" : "escaped",
                   (a.st_ino == b.st_ino && a.st_dev == b.st_dev) ? "the sandbox root" : "another root");
            umount2("/tmp/u", MNT_DETACH);
        }
        rmdir("/tmp/u");
        /* The new namespace's caps must not work on the worker: sethostname in the
         * sandbox's (parent-owned) UTS namespace must fail. */
        if (sethostname("userns-escape", 13) == 0)
            printf("escaped: sethostname worked on a namespace the new userns does not own\n");
        else
            printf("evidence: sethostname from new userns: %s\n", strerror(errno));
        fflush(stdout);
        _exit(0);
    }
    close(pipefd[1]);
    char buf[2048];
    ssize_t n;
    while ((n = read(pipefd[0], buf, sizeof buf - 1)) > 0) {
        buf[n] = 0;
        fputs(buf, stdout);
        for (char *p = buf; (p = strstr(p, "escaped:")); p++)
            g_escapes++;
    }
    waitpid(pid, NULL, 0);
    each("paths", try_path_secret);
}

/* mknod of a device node, then open and read it: the device cgroup must refuse. */
static void mknod_and_read(const char *name, mode_t type, unsigned maj, unsigned min)
{
    char p[96];
    snprintf(p, sizeof p, "/dev/.attack-%s", name);
    unlink(p);
    if (mknod(p, type | 0600, makedev(maj, min)) != 0) {
        snprintf(p, sizeof p, "/.attack-%s", name);
        unlink(p);
        if (mknod(p, type | 0600, makedev(maj, min)) != 0) {
            evidence("mknod %s %u:%u: %s", name, maj, min, strerror(errno));
            return;
        }
    }
    evidence("mknod %s %u:%u succeeded", p, maj, min);
    int fd = open(p, O_RDONLY | O_NONBLOCK);
    if (fd >= 0) {
        unsigned char buf[512];
        ssize_t n = read(fd, buf, sizeof buf);
        int nonzero = 0;
        for (ssize_t i = 0; i < n; i++)
            nonzero += buf[i] != 0;
        escaped("opened %s (%s %u:%u, made with mknod) and read %zd bytes (%d non-zero)", p,
                S_ISBLK(type) ? "block" : "char", maj, min, n, nonzero);
        close(fd);
    } else {
        evidence("open %s: %s", p, strerror(errno));
    }
    unlink(p);
}

static void case_mknod(void)
{
    mknod_and_read("mem", S_IFCHR, 1, 1);
    mknod_and_read("kmem", S_IFCHR, 1, 2);
    mknod_and_read("port", S_IFCHR, 1, 4);
    mknod_and_read("kmsg", S_IFCHR, 1, 11);
    mknod_and_read("sda", S_IFBLK, 8, 0);
    /* The worker's real disks: sysfs tells their numbers. */
    DIR *d = opendir("/sys/block");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char p[300], dev[32];
        unsigned maj, min;
        snprintf(p, sizeof p, "/sys/block/%s/dev", e->d_name);
        if (slurp(p, dev, sizeof dev) > 0 && sscanf(dev, "%u:%u", &maj, &min) == 2)
            mknod_and_read(e->d_name, S_IFBLK, maj, min);
    }
    if (d)
        closedir(d);
}

static void try_open_dev(const char *p)
{
    int fd = open(p, O_RDONLY | O_NONBLOCK);
    if (fd >= 0) {
        escaped("opened %s", p);
        close(fd);
    } else {
        evidence("open %s: %s", p, strerror(errno));
    }
}

static void case_dev_mem(void)
{
    try_open_dev("/dev/mem");
    try_open_dev("/dev/kmem");
    try_open_dev("/dev/port");
    try_open_dev("/proc/kcore");
    char buf[64];
    ssize_t n = slurp("/proc/kcore", buf, sizeof buf);
    if (n > 0)
        escaped("read %zd bytes of /proc/kcore", n);
    int e = denied("iopl(3)", iopl(3));
    if (!e)
        escaped("iopl(3) succeeded: raw port I/O");
}

static void case_dev_kmsg(void)
{
    try_open_dev("/dev/kmsg");
    int fd = open("/dev/kmsg", O_WRONLY);
    if (fd >= 0) {
        escaped("/dev/kmsg open for writing: can forge host kernel log lines");
        close(fd);
    }
    try_open_dev("/proc/kmsg");
    char buf[256];
    int n = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, buf, sizeof buf);
    if (n > 0)
        escaped("syslog(READ_ALL) read %d bytes of the host kernel log", n);
    else
        evidence("syslog(READ_ALL): %s", n < 0 ? strerror(errno) : "empty");
}

static void case_block_devices(void)
{
    const char *devs[] = {"/dev/vda", "/dev/sda", "/dev/nvme0n1", "/dev/xvda", "/dev/loop0",
                          "/dev/zram0", "/dev/dm-0", "/dev/fuse", "/dev/net/tun"};
    for (size_t i = 0; i < sizeof devs / sizeof *devs; i++)
        try_open_dev(devs[i]);
    DIR *d = opendir("/dev");
    struct dirent *e;
    char list[1024] = "";
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        strncat(list, e->d_name, sizeof list - strlen(list) - 2);
        strncat(list, " ", sizeof list - strlen(list) - 1);
        char p[300];
        struct stat st;
        snprintf(p, sizeof p, "/dev/%s", e->d_name);
        if (lstat(p, &st) == 0 && S_ISBLK(st.st_mode))
            escaped("block device node %s present in /dev", p);
    }
    if (d)
        closedir(d);
    evidence("/dev holds: %s", list);
}

static void case_modules(void)
{
    int fd = open("/bin/attack", O_RDONLY | O_CLOEXEC);
    int e = denied("finit_module(/bin/attack)", syscall(SYS_finit_module, fd, "", 0));
    if (!is_permission_error(e))
        escaped("finit_module got past the permission check (%s)", e ? strerror(e) : "loaded");
    close(fd);
    static char junk[64];
    e = denied("init_module(junk)", syscall(SYS_init_module, junk, sizeof junk, ""));
    if (!is_permission_error(e))
        escaped("init_module got past the permission check (%s)", e ? strerror(e) : "loaded");
    e = denied("delete_module(nonexistent)", syscall(SYS_delete_module, "berth_no_such_mod", O_NONBLOCK));
    if (!is_permission_error(e))
        escaped("delete_module got past the permission check (%s)", strerror(e));
}

static void case_kexec_reboot(void)
{
    /* kexec_load with no segments and KEXEC_ARCH_DEFAULT unloads a loaded image: harmless. */
    int e = denied("kexec_load(0 segments)", syscall(SYS_kexec_load, 0, 0, NULL, 0));
    if (!is_permission_error(e))
        escaped("kexec_load got past the permission check (%s)", e ? strerror(e) : "ok");
    e = denied("kexec_file_load(-1)", syscall(SYS_kexec_file_load, -1, -1, 0, "", 0));
    if (!is_permission_error(e))
        escaped("kexec_file_load got past the permission check (%s)", strerror(e));
    /* CAD_OFF is harmless; inside a pid namespace it fails with EINVAL, on the host it works. */
    e = denied("reboot(CAD_OFF)", syscall(SYS_reboot, LINUX_REBOOT_MAGIC1, LINUX_REBOOT_MAGIC2,
                                           LINUX_REBOOT_CMD_CAD_OFF, NULL));
    if (e == 0)
        escaped("reboot(CAD_OFF) changed the host's ctrl-alt-del setting");
}

static void case_swapon(void)
{
    int fd = open("/tmp/swapfile", O_CREAT | O_WRONLY | O_TRUNC, 0600);
    if (fd >= 0)
        close(fd);
    int e = denied("swapon(/tmp/swapfile)", swapon("/tmp/swapfile", 0));
    if (!is_permission_error(e))
        escaped("swapon got past the permission check (%s)", e ? strerror(e) : "enabled");
    e = denied("swapoff(/tmp/swapfile)", swapoff("/tmp/swapfile"));
    if (!is_permission_error(e))
        escaped("swapoff got past the permission check (%s)", strerror(e));
    unlink("/tmp/swapfile");
}

static void case_clock(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    /* Set the clock to what it already is: harmless if it works, and it must not. */
    if (denied("settimeofday(now)", settimeofday(&tv, NULL)) == 0)
        escaped("settimeofday changed the host clock");
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (denied("clock_settime(REALTIME, now)", clock_settime(CLOCK_REALTIME, &ts)) == 0)
        escaped("clock_settime changed the host clock");
    struct timex tx;
    memset(&tx, 0, sizeof tx);
    tx.modes = 0x0001; /* ADJ_OFFSET, 0 offset */
    if (denied("adjtimex(ADJ_OFFSET 0)", syscall(SYS_adjtimex, &tx)) == 0)
        escaped("adjtimex adjusted the host clock");
}

static void try_open_write(const char *p)
{
    int fd = open(p, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        escaped("%s is open for writing (host-wide setting)", p);
        close(fd);
    } else {
        evidence("open %s for writing: %s", p, strerror(errno));
    }
}

static void case_proc_sys(void)
{
    const char *host_wide[] = {"/proc/sys/kernel/core_pattern", "/proc/sys/kernel/modprobe",
                               "/proc/sys/vm/drop_caches", "/proc/sys/kernel/panic",
                               "/proc/sysrq-trigger", "/proc/sys/fs/binfmt_misc/register",
                               "/proc/sys/kernel/randomize_va_space"};
    for (size_t i = 0; i < sizeof host_wide / sizeof *host_wide; i++)
        try_open_write(host_wide[i]);
}

static void case_hostname(void)
{
    char before[256] = "", after[256] = "";
    gethostname(before, sizeof before);
    evidence("hostname in the sandbox: %s", before);
    /* Writes land in the sandbox's own UTS namespace at most; the test compares the
     * worker's hostname before and after. */
    int fd = open("/proc/sys/kernel/hostname", O_WRONLY);
    if (fd >= 0) {
        if (write(fd, "attacked", 8) == 8)
            evidence("wrote /proc/sys/kernel/hostname");
        close(fd);
    } else {
        evidence("open /proc/sys/kernel/hostname for writing: %s", strerror(errno));
    }
    if (sethostname("attacked", 8) == 0)
        evidence("sethostname succeeded (own UTS namespace)");
    else
        evidence("sethostname: %s", strerror(errno));
    gethostname(after, sizeof after);
    evidence("hostname now: %s", after);
    if (strcmp(before, after) != 0 && sethostname(before, strlen(before)) == 0)
        evidence("restored hostname %s", before);
}

static void case_sys_write(void)
{
    const char *paths[] = {"/sys/kernel/mm/transparent_hugepage/enabled", "/sys/kernel/uevent_helper",
                           "/sys/power/state", "/sys/module/kernel/parameters/panic",
                           "/sys/block/vda/queue/scheduler", "/sys/kernel/profiling"};
    for (size_t i = 0; i < sizeof paths / sizeof *paths; i++)
        try_open_write(paths[i]);
    if (mkdir("/sys/fs/berth-attack", 0700) == 0) {
        escaped("created a directory in /sys");
        rmdir("/sys/fs/berth-attack");
    }
}

static void case_cgroup_parent(void)
{
    char cg[4096];
    if (slurp("/proc/self/cgroup", cg, sizeof cg) > 0)
        evidence("/proc/self/cgroup: %.200s", cg);
    const char *roots[] = {"/sys/fs/cgroup", "/sys/fs/cgroup/memory", "/sys/fs/cgroup/pids",
                           "/sys/fs/cgroup/unified", "/sys/fs/cgroup/cpu"};
    for (size_t i = 0; i < sizeof roots / sizeof *roots; i++) {
        char p[512];
        snprintf(p, sizeof p, "%s/cgroup.procs", roots[i]);
        try_open_write(p);
        snprintf(p, sizeof p, "%s/release_agent", roots[i]);
        try_open_write(p);
        snprintf(p, sizeof p, "%s/berth/memory.limit_in_bytes", roots[i]);
        try_open_write(p);
    }
    mkdir("/tmp/cg", 0700);
    if (mount("cgroup", "/tmp/cg", "cgroup", 0, "memory") == 0) {
        escaped("mounted the host's memory cgroup hierarchy");
        umount2("/tmp/cg", MNT_DETACH);
    } else {
        evidence("mount cgroup memory: %s", strerror(errno));
    }
    if (mount("cgroup2", "/tmp/cg", "cgroup2", 0, NULL) == 0) {
        escaped("mounted a cgroup2 hierarchy");
        umount2("/tmp/cg", MNT_DETACH);
    } else {
        evidence("mount cgroup2: %s", strerror(errno));
    }
    rmdir("/tmp/cg");
}

struct handle8 {
    unsigned int handle_bytes;
    int handle_type;
    unsigned char f_handle[8];
};

static void case_open_by_handle(void)
{
    /* "Shocker": guess the handle of inode 2 (a filesystem root) and open it. */
    struct handle8 h = {8, 1, {2, 0, 0, 0, 0, 0, 0, 0}};
    const char *mounts[] = {"/", "/home", "/tmp", "/proc", "/dev"};
    for (size_t i = 0; i < sizeof mounts / sizeof *mounts; i++) {
        int mfd = open(mounts[i], O_RDONLY | O_DIRECTORY);
        if (mfd < 0)
            continue;
        long fd = syscall(SYS_open_by_handle_at, mfd, &h, O_RDONLY);
        int e = fd < 0 ? errno : 0;
        evidence("open_by_handle_at(%s, inode 2): %s", mounts[i], e ? strerror(e) : "opened");
        if (fd >= 0) {
            escaped("open_by_handle_at opened a guessed handle on %s", mounts[i]);
            close((int)fd);
        } else if (e != EPERM && e != ENOSYS && e != EACCES) {
            escaped("open_by_handle_at got past the CAP_DAC_READ_SEARCH check on %s (%s)", mounts[i],
                    strerror(e));
        }
        close(mfd);
    }
}

static int identity_uid_map(void)
{
    char m[256];
    if (slurp("/proc/self/uid_map", m, sizeof m) <= 0)
        return 1;
    unsigned a, b, c;
    return sscanf(m, "%u %u %u", &a, &b, &c) == 3 && a == 0 && b == 0 && c == 4294967295u;
}

static void case_keyctl(void)
{
    int host_root = identity_uid_map();
    evidence("uid_map is %s", host_root ? "the identity: uid 0 here is the host's root" : "shifted");
    /* KEYCTL_GET_KEYRING_ID of the user keyring (uid 0's, shared with the host's root). */
    long id = syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, -4 /* KEY_SPEC_USER_KEYRING */, 0);
    int e = id < 0 ? errno : 0;
    evidence("keyctl(GET_KEYRING_ID, @u): %s", e ? strerror(e) : "ok");
    if (!e && host_root)
        escaped("reached uid 0's user keyring %ld, which the host's root shares", id);
    id = syscall(SYS_add_key, "user", "berth-attack", "x", 1, -3 /* KEY_SPEC_SESSION_KEYRING */);
    e = id < 0 ? errno : 0;
    evidence("add_key(session): %s", e ? strerror(e) : "ok");
    if (!e)
        syscall(SYS_keyctl, 21 /* KEYCTL_INVALIDATE */, id);
}

static void case_bpf(void)
{
    union bpf_attr a;
    memset(&a, 0, sizeof a);
    a.map_type = BPF_MAP_TYPE_ARRAY;
    a.key_size = 4;
    a.value_size = 4;
    a.max_entries = 1;
    long fd = syscall(SYS_bpf, BPF_MAP_CREATE, &a, sizeof a);
    if (fd >= 0) {
        escaped("bpf(BPF_MAP_CREATE) succeeded");
        close((int)fd);
    } else {
        evidence("bpf(BPF_MAP_CREATE): %s", strerror(errno));
    }
    struct bpf_insn prog[] = {{BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, 0}, {BPF_JMP | BPF_EXIT, 0, 0, 0, 0}};
    memset(&a, 0, sizeof a);
    a.prog_type = BPF_PROG_TYPE_KPROBE;
    a.insns = (unsigned long)prog;
    a.insn_cnt = 2;
    a.license = (unsigned long)"GPL";
    fd = syscall(SYS_bpf, BPF_PROG_LOAD, &a, sizeof a);
    if (fd >= 0) {
        escaped("bpf(BPF_PROG_LOAD kprobe) succeeded");
        close((int)fd);
    } else {
        evidence("bpf(BPF_PROG_LOAD kprobe): %s", strerror(errno));
    }
}

static void case_perf_event(void)
{
    struct perf_event_attr pe;
    memset(&pe, 0, sizeof pe);
    pe.type = PERF_TYPE_SOFTWARE;
    pe.size = sizeof pe;
    pe.config = PERF_COUNT_SW_CPU_CLOCK;
    pe.disabled = 1;
    /* System-wide on cpu 0: sees every process on the worker. */
    long fd = syscall(SYS_perf_event_open, &pe, -1, 0, -1, 0);
    if (fd >= 0) {
        escaped("perf_event_open(pid -1, cpu 0): system-wide profiling of the worker");
        close((int)fd);
    } else {
        evidence("perf_event_open(pid -1, cpu 0): %s", strerror(errno));
    }
    pe.exclude_kernel = 0;
    fd = syscall(SYS_perf_event_open, &pe, 0, -1, -1, 0);
    if (fd >= 0) {
        escaped("perf_event_open(self, kernel included) succeeded");
        close((int)fd);
    } else {
        evidence("perf_event_open(self, with kernel): %s", strerror(errno));
    }
}

static void case_userfaultfd(void)
{
    long fd = syscall(SYS_userfaultfd, O_CLOEXEC);
    if (fd >= 0) {
        escaped("userfaultfd (kernel faults too) succeeded: an exploitation primitive");
        close((int)fd);
    } else {
        evidence("userfaultfd(0): %s", strerror(errno));
    }
}

static void case_raw_socket(void)
{
    int fd = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
    if (fd >= 0) {
        escaped("raw IPv4 socket opened (CAP_NET_RAW: can forge packets)");
        close(fd);
    } else {
        evidence("socket(AF_INET, SOCK_RAW): %s", strerror(errno));
    }
    fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
    if (fd >= 0) {
        escaped("raw IPPROTO_RAW socket opened");
        close(fd);
    } else {
        evidence("socket(AF_INET, SOCK_RAW, IPPROTO_RAW): %s", strerror(errno));
    }
}

static void case_packet_socket(void)
{
    int fd = socket(AF_PACKET, SOCK_RAW, htons(0x0003 /* ETH_P_ALL */));
    if (fd >= 0) {
        escaped("packet socket opened (CAP_NET_RAW: can sniff and forge frames)");
        close(fd);
    } else {
        evidence("socket(AF_PACKET): %s", strerror(errno));
    }
}

/* ----------------------------------------------------------- networking */

static int g_connects;

static void try_connect(const char *addr, const char *port)
{
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)atoi(port));
    if (inet_pton(AF_INET, addr, &sa.sin_addr) != 1)
        return;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    g_connects++;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
        char buf[128] = "";
        ssize_t n = read(fd, buf, sizeof buf - 1);
        if (n > 0)
            buf[n] = 0;
        const char *banner = arg("banner");
        if (banner && *banner && strstr(buf, banner))
            escaped("connected to the host listener at %s:%s (it said %s)", addr, port, banner);
        else
            escaped("connected to %s:%s, which is not this sandbox's own app port", addr, port);
    } else {
        evidence("connect %s:%s: %s", addr, port, strerror(errno));
    }
    close(fd);
}

static const char *g_port;
static void try_addr_for_port(const char *addr) { try_connect(addr, g_port); }
static void try_port(const char *port)
{
    g_port = port;
    each("addrs", try_addr_for_port);
    /* The default gateway (the host end of a veth, once there is one). */
    FILE *f = fopen("/proc/net/route", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f)) {
        char ifname[32];
        unsigned dest, gw;
        if (sscanf(line, "%31s %x %x", ifname, &dest, &gw) == 3 && dest == 0 && gw != 0) {
            struct in_addr a = {gw};
            try_connect(inet_ntoa(a), port);
        }
    }
    if (f)
        fclose(f);
}

static void case_connect(void)
{
    each("ports", try_port);
    evidence("%d connection attempts", g_connects);
}

static void case_connect_unix(void)
{
    const char *path = arg("sock");
    if (path) {
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un sa = {AF_UNIX, {0}};
        strncpy(sa.sun_path, path, sizeof sa.sun_path - 1);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
            escaped("connected to the host socket %s", path);
        else
            evidence("connect unix %s: %s", path, strerror(errno));
        close(fd);
        struct stat st;
        if (stat(path, &st) == 0)
            escaped("the host socket path %s exists inside the sandbox", path);
    }
    const char *abs = arg("abstract");
    if (abs) {
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un sa = {AF_UNIX, {0}};
        strncpy(sa.sun_path + 1, abs, sizeof sa.sun_path - 2);
        socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(abs));
        if (connect(fd, (struct sockaddr *)&sa, len) == 0)
            escaped("connected to the host's abstract socket @%s", abs);
        else
            evidence("connect abstract @%s: %s", abs, strerror(errno));
        close(fd);
    }
    /* setns into other namespaces by their host path. */
    DIR *d = opendir("/run/netns");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (e->d_name[0] != '.')
                escaped("host network namespace /run/netns/%s is visible", e->d_name);
        closedir(d);
    } else {
        evidence("/run/netns: %s", strerror(errno));
    }
}

static void case_ifaddrs(void)
{
    struct ifaddrs *ifa, *i;
    if (getifaddrs(&ifa) != 0)
        return;
    for (i = ifa; i; i = i->ifa_next)
        if (i->ifa_addr && i->ifa_addr->sa_family == AF_INET) {
            char b[64];
            inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, b, sizeof b);
            printf("addr: %s %s\n", i->ifa_name, b);
        }
    freeifaddrs(ifa);
}

/* -------------------------------------------------------- resource bombs */

static void reap_all(void)
{
    while (waitpid(-1, NULL, 0) > 0 || errno == EINTR) {
    }
}

static void case_fork_bomb(void)
{
    const int cap = 4000;
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    int pipefd[2];
    if (pipe(pipefd))
        return;
    pid_t leader = fork();
    if (leader == 0) {
        setpgid(0, 0);
        close(pipefd[0]);
        int n = 0, err = 0;
        while (n < cap) {
            pid_t p = fork();
            if (p == 0) {
                pause();
                _exit(0);
            }
            if (p < 0) {
                err = errno;
                break;
            }
            n++;
        }
        int msg[2] = {n, err};
        if (write(pipefd[1], msg, sizeof msg) < 0) {
        }
        pause();
        _exit(0);
    }
    close(pipefd[1]);
    int msg[2] = {0, 0};
    ssize_t r = read(pipefd[0], msg, sizeof msg);
    kill(-leader, SIGKILL);
    kill(leader, SIGKILL);
    reap_all();
    if (r != sizeof msg) {
        evidence("the fork bomb's leader died before reporting (killed inside the sandbox)");
        return;
    }
    evidence("fork bomb made %d processes, then fork failed: %s", msg[0],
             msg[1] ? strerror(msg[1]) : "-");
    if (msg[0] >= cap)
        escaped("made %d processes without hitting a pids limit", msg[0]);
}

static void case_memory_bomb(void)
{
    const long cap_mb = 1024;
    pid_t pid = fork();
    if (pid == 0) {
        for (long mb = 0; mb < cap_mb; mb++) {
            char *p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED)
                _exit(2);
            memset(p, 0xa5, 1 << 20);
        }
        _exit(0);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    if (WIFSIGNALED(st)) {
        evidence("memory bomb killed by signal %d inside the sandbox", WTERMSIG(st));
    } else if (WIFEXITED(st) && WEXITSTATUS(st) == 2) {
        evidence("memory bomb: mmap failed before %ld MiB", cap_mb);
    } else {
        escaped("allocated and touched %ld MiB without being stopped", cap_mb);
    }
}

static void case_tmp_fill(void)
{
    const long cap_mb = 400;
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open("/tmp/fill", O_CREAT | O_WRONLY | O_TRUNC, 0600);
        if (fd < 0)
            _exit(3);
        static char block[1 << 20];
        memset(block, 0x5a, sizeof block);
        long mb = 0;
        for (; mb < cap_mb; mb++)
            if (write(fd, block, sizeof block) != (ssize_t)sizeof block)
                break;
        printf("evidence: wrote %ld MiB to /tmp before: %s\n", mb,
               mb < cap_mb ? strerror(errno) : "the cap");
        fflush(stdout);
        _exit(mb < cap_mb ? (errno == ENOSPC ? 0 : 4) : 1);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    unlink("/tmp/fill");
    if (WIFSIGNALED(st))
        escaped("/tmp is not size-limited: the writer was killed (signal %d) by the memory limit instead",
                WTERMSIG(st));
    else if (WIFEXITED(st) && WEXITSTATUS(st) == 1)
        escaped("wrote %ld MiB to /tmp without hitting a limit", cap_mb);
    else if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        evidence("/tmp is full at its size limit (ENOSPC)");
    else
        evidence("/tmp writer exited %d", WEXITSTATUS(st));
}

/* Starts hog processes that spin for secs seconds, detached from the CGI. */
static void case_cpu_hog(void)
{
    const char *s = arg("secs");
    int secs = s ? atoi(s) : 10;
    int procs = 4;
    pid_t pid = fork();
    if (pid == 0) {
        setsid();
        int null = open("/dev/null", O_RDWR);
        dup2(null, 0);
        dup2(null, 1);
        dup2(null, 2);
        for (int i = 0; i < procs; i++) {
            if (fork() == 0) {
                time_t end = time(NULL) + secs;
                volatile unsigned long x = 0;
                while (time(NULL) < end)
                    for (int k = 0; k < 1000000; k++)
                        x += (unsigned long)k;
                _exit(0);
            }
        }
        reap_all();
        _exit(0);
    }
    evidence("started %d spinning processes for %d s", procs, secs);
}

/* ---------------------------------------------------------------- setuid */

static void case_suid_probe(void)
{
    printf("probe: uid=%u euid=%u\n", getuid(), geteuid());
}

static void case_setuid(void)
{
    struct stat st;
    if (stat("/bin/attack-suid", &st) != 0) {
        evidence("/bin/attack-suid: %s", strerror(errno));
        return;
    }
    evidence("/bin/attack-suid mode %o owner %u", st.st_mode & 07777, st.st_uid);
    char status[4096];
    if (slurp("/proc/self/status", status, sizeof status) > 0) {
        char *p = strstr(status, "NoNewPrivs:");
        if (p)
            evidence("%.*s", (int)strcspn(p, "\n"), p);
    }
    int pipefd[2];
    if (pipe(pipefd))
        return;
    pid_t pid = fork();
    if (pid == 0) {
        close(pipefd[0]);
        dup2(pipefd[1], 1);
        if (setgroups(0, NULL) || setgid(65534) || setuid(65534)) {
            printf("setup failed: %s\n", strerror(errno));
            _exit(1);
        }
        execl("/bin/attack-suid", "attack-suid", "suid_probe", (char *)NULL);
        printf("exec failed: %s\n", strerror(errno));
        _exit(1);
    }
    close(pipefd[1]);
    char buf[256] = "";
    ssize_t n = read(pipefd[0], buf, sizeof buf - 1);
    if (n > 0)
        buf[n] = 0;
    waitpid(pid, NULL, 0);
    buf[strcspn(buf, "\n")] = 0;
    evidence("as uid 65534, exec of the setuid-root binary: %s", buf);
    if (strstr(buf, "euid=0")) {
        if (identity_uid_map())
            escaped("a setuid binary raised uid 65534 to the host's real root");
        else
            evidence("setuid gave root of the sandbox's own user namespace only");
    }
}

/* ------------------------------------------------------- other tenants */

static void case_plant(void)
{
    const char *secret = arg("secret");
    FILE *f = fopen("/home/secret", "w");
    if (!f || !secret) {
        printf("plant failed: %s\n", strerror(errno));
        exit(1);
    }
    fprintf(f, "%s\n", secret);
    fclose(f);
    printf("planted\n");
}

static void case_layer_write(void)
{
    int fd = open("/etc/shared-layer-file", O_WRONLY | O_TRUNC);
    if (fd < 0) {
        evidence("open /etc/shared-layer-file for writing: %s", strerror(errno));
        return;
    }
    if (write(fd, "TAMPERED\n", 9) == 9)
        evidence("rewrote our own /etc/shared-layer-file (an image file)");
    close(fd);
}

static void case_layer_check(void)
{
    char buf[64];
    ssize_t n = slurp("/etc/shared-layer-file", buf, sizeof buf);
    evidence("/etc/shared-layer-file: %s", n > 0 ? buf : "<unreadable>");
    if (n > 0 && strstr(buf, "TAMPERED"))
        escaped("another site's write reached this site's image layer");
}

static void case_caps(void)
{
    char status[4096];
    if (slurp("/proc/self/status", status, sizeof status) <= 0)
        return;
    unsigned long long eff = 0;
    char *p = strstr(status, "CapEff:");
    if (p)
        eff = strtoull(p + 7, NULL, 16);
    const char *lines[] = {"CapEff:", "CapBnd:", "Seccomp:", "NoNewPrivs:"};
    for (size_t i = 0; i < 4; i++)
        if ((p = strstr(status, lines[i])))
            evidence("%.*s", (int)strcspn(p, "\n"), p);
    char m[128];
    if (slurp("/proc/self/uid_map", m, sizeof m) > 0)
        evidence("uid_map: %.*s", (int)strcspn(m, "\n"), m);
    struct {
        int bit;
        const char *name;
    } dangerous[] = {{21, "CAP_SYS_ADMIN"}, {16, "CAP_SYS_MODULE"}, {17, "CAP_SYS_RAWIO"},
                     {19, "CAP_SYS_PTRACE"}, {22, "CAP_SYS_BOOT"}, {25, "CAP_SYS_TIME"},
                     {2, "CAP_DAC_READ_SEARCH"}, {12, "CAP_NET_ADMIN"}, {33, "CAP_MAC_ADMIN"},
                     {39, "CAP_BPF"}, {38, "CAP_PERFMON"}, {24, "CAP_SYS_RESOURCE"},
                     {34, "CAP_SYSLOG"}};
    for (size_t i = 0; i < sizeof dangerous / sizeof *dangerous; i++)
        if (eff & (1ULL << dangerous[i].bit))
            escaped("holds %s", dangerous[i].name);
}

struct attack_case {
    const char *name;
    void (*run)(void);
};

static const struct attack_case CASES[] = {
    {"caps", case_caps},
    {"home_other_site", case_home_other_site},
    {"proc1_root", case_proc1_root},
    {"proc_self_root", case_proc_self_root},
    {"chroot_breakout", case_chroot_breakout},
    {"see_processes", case_see_processes},
    {"signal_others", case_signal_others},
    {"ptrace_others", case_ptrace_others},
    {"proc_exe_overwrite", case_proc_exe_overwrite},
    {"leaked_fds", case_leaked_fds},
    {"cwd_fd", case_cwd_fd},
    {"mount", case_mount},
    {"umount", case_umount},
    {"pivot_root", case_pivot_root},
    {"unshare_userns", case_unshare_userns},
    {"mknod", case_mknod},
    {"dev_mem", case_dev_mem},
    {"dev_kmsg", case_dev_kmsg},
    {"block_devices", case_block_devices},
    {"modules", case_modules},
    {"kexec_reboot", case_kexec_reboot},
    {"swapon", case_swapon},
    {"clock", case_clock},
    {"proc_sys", case_proc_sys},
    {"hostname", case_hostname},
    {"sys_write", case_sys_write},
    {"cgroup_parent", case_cgroup_parent},
    {"open_by_handle", case_open_by_handle},
    {"keyctl", case_keyctl},
    {"bpf", case_bpf},
    {"perf_event", case_perf_event},
    {"userfaultfd", case_userfaultfd},
    {"raw_socket", case_raw_socket},
    {"packet_socket", case_packet_socket},
    {"connect", case_connect},
    {"connect_unix", case_connect_unix},
    {"fork_bomb", case_fork_bomb},
    {"memory_bomb", case_memory_bomb},
    {"tmp_fill", case_tmp_fill},
    {"cpu_hog", case_cpu_hog},
    {"setuid", case_setuid},
    {"layer_write", case_layer_write},
    {"layer_check", case_layer_check},
    /* helpers, not attacks */
    {"suid_probe", case_suid_probe},
    {"plant", case_plant},
    {"ifaddrs", case_ifaddrs},
    {"ping", NULL},
};

int main(int argc, char **argv)
{
    g_argc = argc;
    g_argv = argv;
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: attack CASE [KEY=VALUE ...]\n");
        return 2;
    }
    alarm(50);
    for (size_t i = 0; i < sizeof CASES / sizeof *CASES; i++) {
        if (strcmp(CASES[i].name, argv[1]) != 0)
            continue;
        if (!CASES[i].run) {
            printf("pong\n");
            return 0;
        }
        CASES[i].run();
        if (strcmp(argv[1], "suid_probe") == 0 || strcmp(argv[1], "plant") == 0 ||
            strcmp(argv[1], "ifaddrs") == 0)
            return 0;
        if (g_escapes)
            printf("RESULT: ESCAPED (%d)\n", g_escapes);
        else
            printf("RESULT: CONTAINED\n");
        return 0;
    }
    fprintf(stderr, "attack: unknown case %s\n", argv[1]);
    return 2;
}
