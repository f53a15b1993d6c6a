/*
 * Resource bombs, the setuid binary, the shared image layer, capabilities, and the
 * victim-side helpers.
 * Part of the attack program: see attack.c for the protocol.
 */
#include "attack.h"
#include <linux/falloc.h>

/* -------------------------------------------------------- resource bombs */

void reap_all(void)
{
    while (waitpid(-1, NULL, 0) > 0 || errno == EINTR) {
    }
}

void case_fork_bomb(void)
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

void case_memory_bomb(void)
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

/* Writes up to cap_mb MiB to path in a child process, which prints how far it got
 * and exits 0 at ENOSPC, 1 when it wrote everything, 3 when it could not open the
 * file, 4 on another error. Removes the file; returns the child's wait status. */
static int fill_in_child(const char *path, long cap_mb, int byte, const char *what)
{
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0600);
        if (fd < 0)
            _exit(3);
        static char block[1 << 20];
        memset(block, byte, sizeof block);
        long mb = 0;
        errno = 0;
        for (; mb < cap_mb; mb++) {
            ssize_t w = write(fd, block, sizeof block);
            if (w != (ssize_t)sizeof block) {
                /* A short write at the limit: the next one says why. */
                if (w >= 0 && write(fd, block, 1) < 0 && errno == 0)
                    errno = EIO;
                break;
            }
        }
        printf("evidence: wrote %ld MiB to %s before: %s\n", mb, what,
               mb < cap_mb ? strerror(errno) : "the cap");
        fflush(stdout);
        _exit(mb < cap_mb ? (errno == ENOSPC ? 0 : 4) : 1);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    unlink(path);
    return st;
}

/* Fills the root filesystem (the overlay's writable layer). */
void case_rootfs_fill(void)
{
    const long cap_mb = 1536;
    int st = fill_in_child("/rootfs-fill", cap_mb, 0x3c, "the root filesystem");
    if (WIFEXITED(st) && WEXITSTATUS(st) == 1)
        escaped("wrote %ld MiB to the root filesystem without hitting a limit", cap_mb);
    else if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        evidence("the root filesystem's writable layer is full at its size limit (ENOSPC)");
    else if (WIFSIGNALED(st))
        evidence("the writer was killed (signal %d) by its own memory limit", WTERMSIG(st));
    else
        evidence("root filesystem writer exited %d", WEXITSTATUS(st));
}

/* Floods the instance log: fd 3 is the web server's stderr, which is the log file (the
 * CGI wrapper passes it). Also preallocates blocks past its end. The host checks the
 * file's size. */
void case_log_flood(void)
{
    const long total_mb = 48;
    struct stat st;
    if (fstat(3, &st) != 0 || !S_ISREG(st.st_mode)) {
        /* No RESULT line: the harness reports an error, never a pass. */
        printf("evidence: fd 3 is not the instance log (%s): cannot run\n", strerror(errno));
        fflush(stdout);
        _exit(2);
    }
    static char block[1 << 20];
    memset(block, 'L', sizeof block);
    for (size_t i = 1023; i < sizeof block; i += 1024)
        block[i] = '\n';
    long mb = 0;
    for (; mb < total_mb; mb++) {
        if (write(3, block, sizeof block) != (ssize_t)sizeof block)
            break;
        usleep(40000);
    }
    evidence("wrote %ld MiB to the log", mb);
    if (fallocate(3, FALLOC_FL_KEEP_SIZE, 0, 64L << 20) == 0)
        evidence("preallocated 64 MiB past the log's end");
    else
        evidence("fallocate on the log: %s", strerror(errno));
}

void case_tmp_fill(void)
{
    const long cap_mb = 400;
    int st = fill_in_child("/tmp/fill", cap_mb, 0x5a, "/tmp");
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
void case_cpu_hog(void)
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

void case_suid_probe(void)
{
    printf("probe: uid=%u euid=%u\n", getuid(), geteuid());
}

void case_setuid(void)
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

void case_plant(void)
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

void case_layer_write(void)
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

void case_layer_check(void)
{
    char buf[64];
    ssize_t n = slurp("/etc/shared-layer-file", buf, sizeof buf);
    evidence("/etc/shared-layer-file: %s", n > 0 ? buf : "<unreadable>");
    if (n > 0 && strstr(buf, "TAMPERED"))
        escaped("another site's write reached this site's image layer");
}

void case_caps(void)
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
