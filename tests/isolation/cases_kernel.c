/*
 * Kernel interfaces a tenant must not reach: devices, modules, clocks, sysctls,
 * cgroups, keyrings, bpf, perf, userfaultfd, raw sockets.
 * Part of the attack program: see attack.c for the protocol.
 */
#include "attack.h"

void mknod_and_read(const char *name, mode_t type, unsigned maj, unsigned min)
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

void case_mknod(void)
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

void try_open_dev(const char *p)
{
    int fd = open(p, O_RDONLY | O_NONBLOCK);
    if (fd >= 0) {
        escaped("opened %s", p);
        close(fd);
    } else {
        evidence("open %s: %s", p, strerror(errno));
    }
}

void case_dev_mem(void)
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

void case_dev_kmsg(void)
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

void case_block_devices(void)
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

void case_modules(void)
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

void case_kexec_reboot(void)
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

void case_swapon(void)
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

void case_clock(void)
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

void try_open_write(const char *p)
{
    int fd = open(p, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        escaped("%s is open for writing (host-wide setting)", p);
        close(fd);
    } else {
        evidence("open %s for writing: %s", p, strerror(errno));
    }
}

void case_proc_sys(void)
{
    const char *host_wide[] = {"/proc/sys/kernel/core_pattern", "/proc/sys/kernel/modprobe",
                               "/proc/sys/vm/drop_caches", "/proc/sys/kernel/panic",
                               "/proc/sysrq-trigger", "/proc/sys/fs/binfmt_misc/register",
                               "/proc/sys/kernel/randomize_va_space"};
    for (size_t i = 0; i < sizeof host_wide / sizeof *host_wide; i++)
        try_open_write(host_wide[i]);
}

void case_hostname(void)
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

void case_sys_write(void)
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

void case_cgroup_parent(void)
{
    char cg[4096];
    if (slurp("/proc/self/cgroup", cg, sizeof cg) > 0) {
        evidence("/proc/self/cgroup: %.200s", cg);
        /* Own cgroup namespace: the sandbox's cgroup is its root, "/". */
        if (strstr(cg, "/berth") != NULL)
            escaped("/proc/self/cgroup shows the host's cgroup hierarchy (no cgroup namespace)");
    }
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

void case_open_by_handle(void)
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

int identity_uid_map(void)
{
    char m[256];
    if (slurp("/proc/self/uid_map", m, sizeof m) <= 0)
        return 1;
    unsigned a, b, c;
    return sscanf(m, "%u %u %u", &a, &b, &c) == 3 && a == 0 && b == 0 && c == 4294967295u;
}

void case_keyctl(void)
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

void case_bpf(void)
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

void case_perf_event(void)
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

void case_userfaultfd(void)
{
    long fd = syscall(SYS_userfaultfd, O_CLOEXEC);
    if (fd >= 0) {
        escaped("userfaultfd (kernel faults too) succeeded: an exploitation primitive");
        close((int)fd);
    } else {
        evidence("userfaultfd(0): %s", strerror(errno));
    }
}

void case_raw_socket(void)
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

void case_packet_socket(void)
{
    int fd = socket(AF_PACKET, SOCK_RAW, htons(0x0003 /* ETH_P_ALL */));
    if (fd >= 0) {
        escaped("packet socket opened (CAP_NET_RAW: can sniff and forge frames)");
        close(fd);
    } else {
        evidence("socket(AF_PACKET): %s", strerror(errno));
    }
}
