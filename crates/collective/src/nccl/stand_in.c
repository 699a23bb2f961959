#include <limits.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef struct { char internal[128]; } ncclUniqueId;

/* struct ncclConfig_v22800, as nccl.h 2.28 declares it. */
typedef struct {
  size_t size;
  unsigned int magic;
  unsigned int version;
  int blocking;
  int cgaClusterSize;
  int minCTAs;
  int maxCTAs;
  const char *netName;
  int splitShare;
  int trafficClass;
  const char *commName;
  int collnetEnable;
  int CTAPolicy;
  int shrinkShare;
  int nvlsCTAs;
  int nChannelsPerNetPeer;
  int nvlinkCentricSched;
} ncclConfig_t;

struct comm { int nranks, rank, state, alive; };

static volatile int init_hang, op_hang, async_error, enqueue_error, enqueue_in_progress,
    finalize_hang;
static volatile int in_progress_left, pending;
static volatile int n_init, n_abort, n_destroy, n_finalize, n_async_polls;
static char last_error[256] = "";

int fake_set(const char *name, int value) {
  if (!strcmp(name, "init_hang")) init_hang = value;
  else if (!strcmp(name, "op_hang")) op_hang = value;
  else if (!strcmp(name, "async_error")) async_error = value;
  else if (!strcmp(name, "enqueue_error")) enqueue_error = value;
  else if (!strcmp(name, "enqueue_in_progress")) enqueue_in_progress = value;
  else if (!strcmp(name, "finalize_hang")) finalize_hang = value;
  else return -1;
  return 0;
}

int fake_get(const char *name) {
  if (!strcmp(name, "init")) return n_init;
  if (!strcmp(name, "abort")) return n_abort;
  if (!strcmp(name, "destroy")) return n_destroy;
  if (!strcmp(name, "finalize")) return n_finalize;
  if (!strcmp(name, "async_polls")) return n_async_polls;
  return -1;
}

static int fail(int code, const char *why) {
  strncpy(last_error, why, sizeof last_error - 1);
  return code;
}

int ncclGetVersion(int *version) { *version = 22809; return 0; }

int ncclGetUniqueId(ncclUniqueId *id) {
  for (int i = 0; i < 128; i++) id->internal[i] = (char)(i * 7 + 3);
  return 0;
}

int ncclCommInitRankConfig(struct comm **out, int nranks, ncclUniqueId id, int rank,
                           ncclConfig_t *config) {
  *out = NULL;
  if (!config || config->size != sizeof(ncclConfig_t) || config->magic != 0xcafebeef ||
      config->version != 22800)
    return fail(4, "fake: config not from a 2.28 NCCL_CONFIG_INITIALIZER");
  if (config->blocking != 0) return fail(4, "fake: config is not non-blocking");
  if (config->cgaClusterSize != INT_MIN || config->minCTAs != INT_MIN ||
      config->maxCTAs != INT_MIN || config->netName || config->splitShare != INT_MIN ||
      config->trafficClass != INT_MIN || config->commName || config->collnetEnable != INT_MIN ||
      config->CTAPolicy != INT_MIN || config->shrinkShare != INT_MIN ||
      config->nvlsCTAs != INT_MIN || config->nChannelsPerNetPeer != INT_MIN ||
      config->nvlinkCentricSched != INT_MIN)
    return fail(4, "fake: config attributes not left undefined");
  for (int i = 0; i < 128; i++)
    if (id.internal[i] != (char)(i * 7 + 3)) return fail(4, "fake: unique id garbled");
  if (nranks < 1 || rank < 0 || rank >= nranks) return fail(4, "fake: bad rank");
  struct comm *c = calloc(1, sizeof *c);
  c->nranks = nranks;
  c->rank = rank;
  c->alive = 1;
  c->state = init_hang ? 7 : 0;
  n_init++;
  *out = c;
  return 7;
}

int ncclCommGetAsyncError(struct comm *c, int *state) {
  if (!c || !c->alive) return fail(5, "fake: communicator used after abort or destroy");
  n_async_polls++;
  if (in_progress_left > 0) { in_progress_left--; *state = 7; return 0; }
  *state = c->state;
  return 0;
}

static size_t type_size(int type) {
  switch (type) {
    case 4: case 8: return 8;
    case 7: return 4;
    default: return 0;
  }
}

static int enqueue(struct comm *c) {
  if (!c || !c->alive) return fail(5, "fake: communicator used after abort or destroy");
  if (enqueue_error) return fail(5, "fake: enqueue refused");
  if (op_hang) pending = 1;
  if (async_error) { c->state = 6; fail(6, "fake: peer vanished"); }
  if (enqueue_in_progress) { in_progress_left = enqueue_in_progress; return 7; }
  return 0;
}

int ncclAllReduce(const void *send, void *recv, size_t count, int type, int op,
                  struct comm *c, void *stream) {
  size_t size = type_size(type);
  (void)stream;
  if (!size || (op != 0 && op != 2)) return fail(4, "fake: bad type or op");
  if (send != recv) memmove(recv, send, count * size);
  return enqueue(c);
}

int ncclAllGather(const void *send, void *recv, size_t count, int type, struct comm *c,
                  void *stream) {
  size_t size = type_size(type);
  (void)stream;
  if (!size || !c) return fail(4, "fake: bad type");
  memmove((char *)recv + (size_t)c->rank * count * size, send, count * size);
  return enqueue(c);
}

int ncclBroadcast(const void *send, void *recv, size_t count, int type, int root,
                  struct comm *c, void *stream) {
  size_t size = type_size(type);
  (void)stream;
  if (!size || !c || root < 0 || root >= c->nranks) return fail(4, "fake: bad type or root");
  if (send != recv) memmove(recv, send, count * size);
  return enqueue(c);
}

int ncclCommAbort(struct comm *c) {
  if (!c || !c->alive) return fail(5, "fake: abort of a dead communicator");
  c->alive = 0; /* kept, not freed, so that later use is caught */
  pending = 0;
  n_abort++;
  return 0;
}

int ncclCommFinalize(struct comm *c) {
  if (!c || !c->alive) return fail(5, "fake: finalize of a dead communicator");
  n_finalize++;
  if (finalize_hang) { c->state = 7; return 7; }
  return 0;
}

int ncclCommDestroy(struct comm *c) {
  if (!c || !c->alive) return fail(5, "fake: destroy of a dead communicator");
  c->alive = 0;
  n_destroy++;
  return 0;
}

const char *ncclGetErrorString(int result) {
  switch (result) {
    case 0: return "no error";
    case 4: return "invalid argument";
    case 5: return "invalid usage";
    case 6: return "remote process exited or there was a network error";
    case 7: return "NCCL operation in progress";
    default: return "unknown result code";
  }
}

const char *ncclGetLastError(struct comm *c) { (void)c; return last_error; }

/* The CUDA runtime, one device, host memory. */
int cudaSetDevice(int device) { return device == 0 ? 0 : 101; }
int cudaGetDeviceCount(int *count) { *count = 1; return 0; }
int cudaStreamQuery(void *stream) { (void)stream; return pending ? 600 : 0; }
const char *cudaGetErrorString(int error) {
  return error == 101 ? "invalid device ordinal" : "fake CUDA error";
}
int cudaMalloc(void **ptr, size_t size) { *ptr = malloc(size); return *ptr ? 0 : 2; }
int cudaFree(void *ptr) { free(ptr); return 0; }
int cudaMemcpy(void *dst, const void *src, size_t count, int kind) {
  if (kind != 1 && kind != 2) return 21;
  memcpy(dst, src, count);
  return 0;
}
int cudaLaunchHostFunc(void *stream, void (*fn)(void *), void *data) {
  (void)stream;
  fn(data);
  return 0;
}
