/*
 * Connections from the sandbox to the platform, the host and other sandboxes.
 * Part of the attack program: see attack.c for the protocol.
 */
#include "attack.h"

/* ----------------------------------------------------------- networking */

static int g_connects;

void try_connect(const char *addr, const char *port)
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
void try_addr_for_port(const char *addr) { try_connect(addr, g_port); }
void try_port(const char *port)
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

void case_connect(void)
{
    each("ports", try_port);
    evidence("%d connection attempts", g_connects);
}

void case_connect_unix(void)
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

void case_ifaddrs(void)
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
