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
 * Files: attack.c (helpers, case table, main), attack.h, cases_proc.c (filesystem,
 * /proc, namespaces), cases_kernel.c (devices, syscalls, sysctls, cgroups),
 * cases_net.c (connections), cases_res.c (bombs, setuid, layers, capabilities).
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
#include "attack.h"

int g_escapes;
int g_argc;
char **g_argv;

void evidence(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("evidence: ");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
}

void escaped(const char *fmt, ...)
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

const char *arg(const char *key)
{
    size_t n = strlen(key);
    for (int i = 2; i < g_argc; i++)
        if (strncmp(g_argv[i], key, n) == 0 && g_argv[i][n] == '=')
            return g_argv[i] + n + 1;
    return NULL;
}

/* Calls f(item) for each comma-separated item of argument key. */
void each(const char *key, void (*f)(const char *))
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
ssize_t slurp(const char *path, char *buf, size_t cap)
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
int leaks_secret(const char *path)
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
int denied(const char *what, long rc)
{
    if (rc < 0) {
        int e = errno;
        evidence("%s: %s", what, strerror(e));
        return e;
    }
    evidence("%s: succeeded", what);
    return 0;
}

int is_permission_error(int e)
{
    return e == EPERM || e == EACCES || e == ENOSYS || e == EROFS;
}

/* "Own" = belongs to this sandbox: in our pid namespace and, when its environment
 * says (a complete BERTH_SITE entry; a process in the middle of exec may show a
 * partial one), of our site. */
int same_site(const char *pid)
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
int is_platform(const char *cmd)
{
    const char *a0 = cmd, *slash;
    size_t len = strcspn(cmd, " ");
    for (const char *q = cmd; q < cmd + len && (slash = memchr(q, '/', (size_t)(cmd + len - q)));
         q = slash + 1)
        a0 = slash + 1;
    return strncmp(a0, "berth", 5) == 0;
}

int is_pid(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
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
    {"rootfs_fill", case_rootfs_fill},
    {"log_flood", case_log_flood},
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
