/* Shared declarations of the attack program (attack.c and cases_*.c). */
#ifndef BERTH_ATTACK_H
#define BERTH_ATTACK_H
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

extern int g_escapes;
extern int g_argc;
extern char **g_argv;

void evidence(const char *fmt, ...);
void escaped(const char *fmt, ...);
const char *arg(const char *key);
void each(const char *key, void (*f)(const char *));
ssize_t slurp(const char *path, char *buf, size_t cap);
int leaks_secret(const char *path);
int denied(const char *what, long rc);
int is_permission_error(int e);
int same_site(const char *pid);
int is_platform(const char *cmd);
int is_pid(const char *s);
void try_path_secret(const char *p);
void try_proc_root_path(const char *p);
void case_home_other_site(void);
int same_inode(const char *a, const char *b);
void proc_root_case(const char *root);
void case_proc1_root(void);
void case_proc_self_root(void);
void case_chroot_breakout(void);
void case_see_processes(void);
void try_signal(const char *pid);
void case_signal_others(void);
void try_ptrace(const char *pid);
void case_ptrace_others(void);
void case_proc_exe_overwrite(void);
int is_own_log(const struct stat *st);
void check_fds_of(const char *pid);
void case_leaked_fds(void);
void case_cwd_fd(void);
void case_mount(void);
void case_umount(void);
void case_pivot_root(void);
void write_file(const char *path, const char *s);
void case_unshare_userns(void);
void mknod_and_read(const char *name, mode_t type, unsigned maj, unsigned min);
void case_mknod(void);
void try_open_dev(const char *p);
void case_dev_mem(void);
void case_dev_kmsg(void);
void case_block_devices(void);
void case_modules(void);
void case_kexec_reboot(void);
void case_swapon(void);
void case_clock(void);
void try_open_write(const char *p);
void case_proc_sys(void);
void case_hostname(void);
void case_sys_write(void);
void case_cgroup_parent(void);
void case_open_by_handle(void);
int identity_uid_map(void);
void case_keyctl(void);
void case_bpf(void);
void case_perf_event(void);
void case_userfaultfd(void);
void case_raw_socket(void);
void case_packet_socket(void);
void try_connect(const char *addr, const char *port);
void try_addr_for_port(const char *addr);
void try_port(const char *port);
void case_connect(void);
void case_connect_unix(void);
void case_ifaddrs(void);
void reap_all(void);
void case_fork_bomb(void);
void case_memory_bomb(void);
void case_tmp_fill(void);
void case_rootfs_fill(void);
void case_log_flood(void);
void case_cpu_hog(void);
void case_suid_probe(void);
void case_setuid(void);
void case_plant(void);
void case_layer_write(void);
void case_layer_check(void);
void case_caps(void);

#endif
