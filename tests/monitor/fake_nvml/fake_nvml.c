/* A fake libnvidia-ml.so.1 for machines without NVIDIA GPUs. It implements the NVML entry points
 * hpc-aidc uses, driven by a scenario file ($HPCAI_FAKE_NVML_SCENARIO) read at nvmlInit. Every metric
 * is a piecewise-linear curve of wall-clock time since the scenario's `start` (optionally periodic),
 * and the energy counter is the exact integral of the power curve, so tests can compare the energy
 * hpc-aidc reports with an analytic value. Scenario format: see tests/monitor/fake_nvml/scenario.py.
 * Build: gcc -O2 -shared -fPIC -Wl,-soname,libnvidia-ml.so.1 -o libnvidia-ml.so.1 fake_nvml.c -lm */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int nvmlReturn_t;
enum {
    OK = 0, E_UNINIT = 1, E_INVALID = 2, E_NOT_SUPPORTED = 3, E_INSUFFICIENT = 7,
    E_DRIVER = 9, E_NOT_FOUND = 6, E_LIB = 12, E_UNKNOWN = 999
};

#define MAXDEV 16
#define MAXPTS 64
#define MAXMIG 7

typedef struct { int n; double t[MAXPTS], v[MAXPTS]; } curve_t;
typedef struct fake_dev fake_dev_t;
struct fake_dev {
    int is_mig, mig_index;
    fake_dev_t *parent;
    char name[96], uuid[96], pci[32];
    int has_counter, nmig, minor;
    curve_t power, util, memutil, memused, temp, smclock;
    double mem_total_mib, counter_offset_mj;
    unsigned long long throttle, ecc_unc, ecc_corr;
    double throttle_for;                /* >0: throttle shows only this long after nvmlInit (a passing slowdown) */
    unsigned retired, remap_pending, remap_unc;
    unsigned xid;                       /* an Xid the driver reports once, as an event, to whoever listens */
    int xid_listening, xid_delivered;
    int hidden;                         /* its device file may not be opened here: NVML does not list it */
    fake_dev_t *migs[MAXMIG];
};

static fake_dev_t devs[MAXDEV];
static fake_dev_t migs[MAXDEV * MAXMIG];
static int ndev, nmigs, inited, init_error;
static double t_start, period, t_init;
static char driver[64] = "fake-0.0";
static char devices_dir[1024];          /* scenario `devices DIR`: the node's device files DIR/nvidia<minor> */
static int visible[MAXDEV], nvisible;   /* NVML's index -> devs[], the GPUs this process may open */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Value of a curve at scenario time x (constant outside the points). */
static double at(const curve_t *c, double x) {
    if (c->n == 0) return 0;
    if (period > 0) x = fmod(x, period);
    if (x <= c->t[0]) return c->v[0];
    for (int i = 1; i < c->n; i++)
        if (x <= c->t[i]) {
            double w = (x - c->t[i - 1]) / (c->t[i] - c->t[i - 1]);
            return c->v[i - 1] + w * (c->v[i] - c->v[i - 1]);
        }
    return c->v[c->n - 1];
}

/* Integral of a curve from 0 to x, for x inside one span [0, last point] or beyond (constant tail). */
static double integral0(const curve_t *c, double x) {
    if (c->n == 0 || x <= 0) return 0;
    double s = 0, lo = 0;
    if (x <= c->t[0]) return c->v[0] * x;
    s += c->v[0] * c->t[0];
    for (int i = 1; i < c->n; i++) {
        lo = c->t[i - 1];
        double hi = x < c->t[i] ? x : c->t[i];
        s += 0.5 * (c->v[i - 1] + at(c, hi)) * (hi - lo);
        if (x <= c->t[i]) return s;
    }
    return s + c->v[c->n - 1] * (x - c->t[c->n - 1]);
}

static double energy_j(const curve_t *c, double x) {
    if (x <= 0) return 0;
    if (period > 0) {
        double k = floor(x / period);
        return k * integral0(c, period) + integral0(c, x - k * period);
    }
    return integral0(c, x);
}

static void parse_curve(curve_t *c, char *text) {
    c->n = 0;
    for (char *tok = strtok(text, " \t"); tok && c->n < MAXPTS; tok = strtok(NULL, " \t")) {
        char *colon = strchr(tok, ':');
        if (!colon) { c->t[0] = 0; c->v[0] = atof(tok); c->n = 1; break; }  /* a constant */
        c->t[c->n] = atof(tok);
        c->v[c->n] = atof(colon + 1);
        c->n++;
    }
}

static void trim(char *s) {
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ')) s[--n] = 0;
}

static int load(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return E_DRIVER;
    char line[4096];
    fake_dev_t *d = NULL;
    ndev = nmigs = 0;
    t_start = 0; period = 0; init_error = 0; devices_dir[0] = 0;
    while (fgets(line, sizeof line, f)) {
        trim(line);
        char *hash = strchr(line, '#');
        if (hash) *hash = 0;
        trim(line);
        char *key = line;
        while (*key == ' ' || *key == '\t') key++;
        if (!*key) continue;
        char *val = key + strcspn(key, " \t");
        if (*val) { *val++ = 0; while (*val == ' ' || *val == '\t') val++; }
        if (!strcmp(key, "driver")) snprintf(driver, sizeof driver, "%s", val);
        else if (!strcmp(key, "start")) t_start = atof(val);
        else if (!strcmp(key, "period")) period = atof(val);
        else if (!strcmp(key, "init_error")) init_error = atoi(val);
        else if (!strcmp(key, "devices")) snprintf(devices_dir, sizeof devices_dir, "%s", val);
        else if (!strcmp(key, "device")) {
            if (ndev >= MAXDEV) break;
            d = &devs[ndev++];
            memset(d, 0, sizeof *d);
            d->has_counter = 1;
            d->minor = ndev - 1;  /* /dev/nvidiaN: the driver's minor number, by default NVML's index */
            d->mem_total_mib = 81559;
            snprintf(d->name, sizeof d->name, "FAKE GPU (simulated)");
            snprintf(d->uuid, sizeof d->uuid, "GPU-00000000-0000-0000-0000-%012d", ndev - 1);
            snprintf(d->pci, sizeof d->pci, "00000000:%02X:00.0", 0x18 + ndev - 1);
        } else if (!d) continue;
        else if (!strcmp(key, "name")) snprintf(d->name, sizeof d->name, "%s", val);
        else if (!strcmp(key, "uuid")) snprintf(d->uuid, sizeof d->uuid, "%s", val);
        else if (!strcmp(key, "pci")) snprintf(d->pci, sizeof d->pci, "%s", val);
        else if (!strcmp(key, "energy_counter")) d->has_counter = atoi(val);
        else if (!strcmp(key, "minor")) d->minor = atoi(val);
        else if (!strcmp(key, "counter_offset_mj")) d->counter_offset_mj = atof(val);
        else if (!strcmp(key, "power")) parse_curve(&d->power, val);
        else if (!strcmp(key, "util")) parse_curve(&d->util, val);
        else if (!strcmp(key, "memutil")) parse_curve(&d->memutil, val);
        else if (!strcmp(key, "mem_used_mib")) parse_curve(&d->memused, val);
        else if (!strcmp(key, "temp")) parse_curve(&d->temp, val);
        else if (!strcmp(key, "sm_clock")) parse_curve(&d->smclock, val);
        else if (!strcmp(key, "mem_total_mib")) d->mem_total_mib = atof(val);
        else if (!strcmp(key, "throttle")) d->throttle = strtoull(val, NULL, 0);
        else if (!strcmp(key, "throttle_for")) d->throttle_for = atof(val);
        else if (!strcmp(key, "xid")) d->xid = (unsigned)atoi(val);
        else if (!strcmp(key, "ecc_uncorrected")) d->ecc_unc = strtoull(val, NULL, 0);
        else if (!strcmp(key, "ecc_corrected")) d->ecc_corr = strtoull(val, NULL, 0);
        else if (!strcmp(key, "retired_pages")) d->retired = (unsigned)atoi(val);
        else if (!strcmp(key, "remap_pending")) d->remap_pending = (unsigned)atoi(val);
        else if (!strcmp(key, "remap_uncorrectable")) d->remap_unc = (unsigned)atoi(val);
        else if (!strcmp(key, "mig")) {
            /* MIG instances share the parent's sensors; NVML reports energy only for the parent. */
            d->nmig = atoi(val);
            for (int i = 0; i < d->nmig && i < MAXMIG && nmigs < MAXDEV * MAXMIG; i++) {
                fake_dev_t *m = &migs[nmigs++];
                memset(m, 0, sizeof *m);
                m->is_mig = 1; m->mig_index = i; m->parent = d;
                d->migs[i] = m;
            }
        }
    }
    fclose(f);
    /* As the driver does in a job whose devices cgroup (Slurm's ConstrainDevices) denies some GPUs: NVML
     * lists only the GPUs whose device file this process may open, numbered from 0 (a device file that
     * opens, or fails for another reason such as ENXIO on a placeholder without a driver, is listed). */
    nvisible = 0;
    for (int i = 0; i < ndev; i++) {
        devs[i].hidden = 0;
        if (devices_dir[0]) {
            char file[1200];
            snprintf(file, sizeof file, "%s/nvidia%d", devices_dir, devs[i].minor);
            int fd = open(file, O_RDWR | O_CLOEXEC);
            if (fd >= 0) close(fd);
            else if (errno == EPERM || errno == EACCES) devs[i].hidden = 1;
        }
        if (!devs[i].hidden) visible[nvisible++] = i;
    }
    /* MIG UUIDs derive from the parent's, fixed once the parent's block is read. */
    for (int i = 0; i < nmigs; i++) {
        fake_dev_t *m = &migs[i];
        snprintf(m->uuid, sizeof m->uuid, "MIG-%.40s-%d", m->parent->uuid + 4, m->mig_index);
        snprintf(m->name, sizeof m->name, "%.80s MIG %d", m->parent->name, m->mig_index);
    }
    return OK;
}

static fake_dev_t *dev(void *h) {
    fake_dev_t *d = (fake_dev_t *)h;
    if ((d >= devs && d < devs + ndev && !d->hidden) || (d >= migs && d < migs + nmigs && !d->parent->hidden))
        return d;
    return NULL;
}
static double sx(void) { return now() - t_start; }

#define CHECK(d, h) if (!inited) return E_UNINIT; fake_dev_t *d = dev(h); if (!d) return E_INVALID;
#define PHYS(d) (d->is_mig ? d->parent : d)

nvmlReturn_t nvmlInitWithFlags(unsigned flags) {
    (void)flags;
    const char *path = getenv("HPCAI_FAKE_NVML_SCENARIO");
    if (!path || !*path) return E_DRIVER;
    /* A per-job override "<scenario>.job<SLURM_JOB_ID>" lets a dev-cluster test give one job other
     * hardware (e.g. no driver) while every other job keeps the shared scenario; a per-node one
     * "<scenario>.node.<SLURMD_NODENAME>" gives one node other GPUs (e.g. one with ECC errors), and
     * "<scenario>.job<ID>.node.<NAME>" one job on one node. The most specific file that exists wins. */
    static char alt[4096];
    const char *job = getenv("SLURM_JOB_ID"), *node = getenv("SLURMD_NODENAME");
    int has_job = job && *job, has_node = node && *node && !strchr(node, '/');
    if (has_job && has_node && snprintf(alt, sizeof alt, "%s.job%s.node.%s", path, job, node) < (int)sizeof alt &&
        access(alt, R_OK) == 0)
        path = alt;
    else if (has_job && snprintf(alt, sizeof alt, "%s.job%s", path, job) < (int)sizeof alt &&
             access(alt, R_OK) == 0)
        path = alt;
    else if (has_node && snprintf(alt, sizeof alt, "%s.node.%s", path, node) < (int)sizeof alt &&
             access(alt, R_OK) == 0)
        path = alt;
    int rc = load(path);
    if (rc != OK) return rc;
    if (init_error) return init_error;   /* lets a scenario stand for "no driver" */
    inited = 1;
    t_init = now();
    return OK;
}
nvmlReturn_t nvmlInit_v2(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlInit(void) { return nvmlInitWithFlags(0); }
nvmlReturn_t nvmlShutdown(void) { inited = 0; return OK; }

const char *nvmlErrorString(nvmlReturn_t r) {
    switch (r) {
    case OK: return "Success";
    case E_UNINIT: return "Uninitialized";
    case E_INVALID: return "Invalid Argument";
    case E_NOT_SUPPORTED: return "Not Supported";
    case E_NOT_FOUND: return "Not Found";
    case E_INSUFFICIENT: return "Insufficient Size";
    case E_DRIVER: return "Driver Not Loaded";
    case E_LIB: return "NVML Shared Library Not Found";
    case 10: return "Timeout";
    default: return "Unknown Error";
    }
}

static nvmlReturn_t copy(char *out, unsigned len, const char *s) {
    if (strlen(s) + 1 > len) return E_INSUFFICIENT;
    memcpy(out, s, strlen(s) + 1);
    return OK;
}
nvmlReturn_t nvmlSystemGetDriverVersion(char *v, unsigned len) { return copy(v, len, driver); }
nvmlReturn_t nvmlSystemGetNVMLVersion(char *v, unsigned len) { return copy(v, len, "fake-nvml-1"); }
nvmlReturn_t nvmlDeviceGetCount_v2(unsigned *n) { if (!inited) return E_UNINIT; *n = (unsigned)nvisible; return OK; }
nvmlReturn_t nvmlDeviceGetCount(unsigned *n) { return nvmlDeviceGetCount_v2(n); }
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned i, void **h) {
    if (!inited) return E_UNINIT;
    if (i >= (unsigned)nvisible) return E_INVALID;
    *h = &devs[visible[i]];
    return OK;
}
nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, void **h) {
    if (!inited) return E_UNINIT;
    for (int i = 0; i < ndev; i++) if (!devs[i].hidden && !strcmp(devs[i].uuid, uuid)) { *h = &devs[i]; return OK; }
    for (int i = 0; i < nmigs; i++)
        if (!migs[i].parent->hidden && !strcmp(migs[i].uuid, uuid)) { *h = &migs[i]; return OK; }
    return E_NOT_FOUND;
}
nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *bus, void **h) {
    if (!inited) return E_UNINIT;
    for (int i = 0; i < ndev; i++)
        if (!devs[i].hidden && (!strcasecmp(devs[i].pci, bus) || !strcasecmp(devs[i].pci + 4, bus))) {
            *h = &devs[i];
            return OK;
        }
    return E_NOT_FOUND;
}
nvmlReturn_t nvmlDeviceGetIndex(void *h, unsigned *i) {
    CHECK(d, h);
    if (d->is_mig) return E_NOT_SUPPORTED;
    for (unsigned k = 0; k < (unsigned)nvisible; k++)
        if (&devs[visible[k]] == d) { *i = k; return OK; }
    return E_INVALID;
}
nvmlReturn_t nvmlDeviceGetMinorNumber(void *h, unsigned *minor) {
    CHECK(d, h);
    if (d->is_mig) return E_NOT_SUPPORTED;
    *minor = (unsigned)d->minor;
    return OK;
}
nvmlReturn_t nvmlDeviceGetName(void *h, char *s, unsigned len) { CHECK(d, h); return copy(s, len, d->name); }
nvmlReturn_t nvmlDeviceGetUUID(void *h, char *s, unsigned len) { CHECK(d, h); return copy(s, len, d->uuid); }

typedef struct {
    char busIdLegacy[16];
    unsigned domain, bus, device, pciDeviceId, pciSubSystemId;
    char busId[32];
} pci_t;
nvmlReturn_t nvmlDeviceGetPciInfo_v3(void *h, pci_t *p) {
    CHECK(d, h);
    fake_dev_t *g = PHYS(d);
    memset(p, 0, sizeof *p);
    snprintf(p->busId, sizeof p->busId, "%s", g->pci);
    snprintf(p->busIdLegacy, sizeof p->busIdLegacy, "%s", g->pci + 4);
    sscanf(g->pci, "%x:%x:%x", &p->domain, &p->bus, &p->device);
    p->pciDeviceId = 0x233010de;
    return OK;
}
nvmlReturn_t nvmlDeviceGetPowerUsage(void *h, unsigned *mw) {
    CHECK(d, h);
    if (d->is_mig) return E_NOT_SUPPORTED;
    *mw = (unsigned)llround(at(&d->power, sx()) * 1000.0);
    return OK;
}
nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(void *h, unsigned long long *mj) {
    CHECK(d, h);
    if (d->is_mig || !d->has_counter) return E_NOT_SUPPORTED;
    /* Floor, like a real millijoule counter: it never runs ahead of the energy used. */
    *mj = (unsigned long long)floor(d->counter_offset_mj + energy_j(&d->power, sx()) * 1000.0);
    return OK;
}
typedef struct { unsigned gpu, memory; } util_t;
nvmlReturn_t nvmlDeviceGetUtilizationRates(void *h, util_t *u) {
    CHECK(d, h);
    fake_dev_t *g = PHYS(d);
    double x = sx();
    u->gpu = (unsigned)llround(at(&g->util, x));
    u->memory = (unsigned)llround(at(&g->memutil, x));
    return OK;
}
typedef struct { unsigned long long total, free, used; } mem_t;
nvmlReturn_t nvmlDeviceGetMemoryInfo(void *h, mem_t *m) {
    CHECK(d, h);
    fake_dev_t *g = PHYS(d);
    m->total = (unsigned long long)(g->mem_total_mib * 1048576.0);
    m->used = (unsigned long long)(at(&g->memused, sx()) * 1048576.0);
    if (m->used > m->total) m->used = m->total;
    m->free = m->total - m->used;
    return OK;
}
nvmlReturn_t nvmlDeviceGetTemperature(void *h, int sensor, unsigned *t) {
    (void)sensor;
    CHECK(d, h);
    *t = (unsigned)llround(at(&PHYS(d)->temp, sx()));
    return OK;
}
nvmlReturn_t nvmlDeviceGetClockInfo(void *h, int type, unsigned *mhz) {
    CHECK(d, h);
    (void)type;
    *mhz = (unsigned)llround(at(&PHYS(d)->smclock, sx()));
    return OK;
}
nvmlReturn_t nvmlDeviceGetCurrentClocksEventReasons(void *h, unsigned long long *r) {
    CHECK(d, h);
    fake_dev_t *p = PHYS(d);
    *r = (p->throttle_for > 0 && now() - t_init > p->throttle_for) ? 0 : p->throttle;
    return OK;
}
nvmlReturn_t nvmlDeviceGetCurrentClocksThrottleReasons(void *h, unsigned long long *r) {
    return nvmlDeviceGetCurrentClocksEventReasons(h, r);
}
nvmlReturn_t nvmlDeviceGetTotalEccErrors(void *h, int errType, int counterType, unsigned long long *n) {
    CHECK(d, h);
    (void)counterType;
    *n = errType == 1 ? PHYS(d)->ecc_unc : PHYS(d)->ecc_corr;
    return OK;
}
nvmlReturn_t nvmlDeviceGetRetiredPages(void *h, int cause, unsigned *count, unsigned long long *addr) {
    CHECK(d, h);
    unsigned n = cause == 1 ? PHYS(d)->retired : 0;  /* double-bit ECC retirements only */
    if (!addr) { *count = n; return n ? E_INSUFFICIENT : OK; }
    if (*count < n) { *count = n; return E_INSUFFICIENT; }
    for (unsigned i = 0; i < n; i++) addr[i] = 0x1000ULL * (i + 1);
    *count = n;
    return OK;
}
nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(void *h, int *pending) {
    CHECK(d, h); *pending = 0; return OK;
}
nvmlReturn_t nvmlDeviceGetRemappedRows(void *h, unsigned *corr, unsigned *unc, unsigned *pending,
                                       unsigned *failure) {
    CHECK(d, h);
    *corr = 0; *unc = PHYS(d)->remap_unc; *pending = PHYS(d)->remap_pending; *failure = 0;
    return OK;
}
nvmlReturn_t nvmlDeviceGetMigMode(void *h, unsigned *cur, unsigned *pending) {
    CHECK(d, h);
    if (d->is_mig) return E_NOT_SUPPORTED;
    *cur = *pending = d->nmig > 0;
    return OK;
}
nvmlReturn_t nvmlDeviceIsMigDeviceHandle(void *h, unsigned *is) { CHECK(d, h); *is = (unsigned)d->is_mig; return OK; }
nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(void *h, unsigned *n) { CHECK(d, h); *n = (unsigned)d->nmig; return OK; }
nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(void *h, unsigned i, void **out) {
    CHECK(d, h);
    if (i >= (unsigned)d->nmig) return E_NOT_FOUND;
    *out = d->migs[i];
    return OK;
}
nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(void *h, void **out) {
    CHECK(d, h);
    if (!d->is_mig) return E_INVALID;
    *out = d->parent;
    return OK;
}

/* Events: only critical Xid errors (nvmlEventTypeXidCriticalError), one set per process. A device's scenario
 * `xid N` is delivered once to the first wait after the device was registered, as the driver would report an
 * Xid that happens while someone listens. */
#define EVENT_XID 0x8ULL
#define E_TIMEOUT 10
typedef struct { void *device; unsigned long long type, data; unsigned gi, ci; } fake_event_t;
static int the_set;
nvmlReturn_t nvmlDeviceGetSupportedEventTypes(void *h, unsigned long long *types) {
    CHECK(d, h); (void)d; *types = EVENT_XID; return OK;
}
nvmlReturn_t nvmlEventSetCreate(void **set) {
    if (!inited) return E_UNINIT;
    for (int i = 0; i < ndev; i++) devs[i].xid_listening = devs[i].xid_delivered = 0;
    *set = &the_set;
    return OK;
}
nvmlReturn_t nvmlDeviceRegisterEvents(void *h, unsigned long long types, void *set) {
    CHECK(d, h);
    if (set != &the_set) return E_INVALID;
    if (types & EVENT_XID) PHYS(d)->xid_listening = 1;
    return OK;
}
nvmlReturn_t nvmlEventSetWait_v2(void *set, fake_event_t *out, unsigned timeout_ms) {
    if (!inited) return E_UNINIT;
    if (set != &the_set || !out) return E_INVALID;
    for (int i = 0; i < ndev; i++) {
        fake_dev_t *d = &devs[i];
        if (d->xid && d->xid_listening && !d->xid_delivered) {
            d->xid_delivered = 1;
            out->device = d; out->type = EVENT_XID; out->data = d->xid; out->gi = out->ci = 0xFFFFFFFFu;
            return OK;
        }
    }
    if (timeout_ms) usleep(timeout_ms * 1000u);
    return E_TIMEOUT;
}
nvmlReturn_t nvmlEventSetWait(void *set, fake_event_t *out, unsigned timeout_ms) {
    return nvmlEventSetWait_v2(set, out, timeout_ms);
}
nvmlReturn_t nvmlEventSetFree(void *set) { return set == &the_set ? OK : E_INVALID; }
