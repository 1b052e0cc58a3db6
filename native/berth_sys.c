/*
 * berth_sys: the few syscalls berthd needs on its hot path that Node does not offer.
 *
 * - spawn / spawnAsync: posix_spawn (glibc runs it with CLONE_VM|CLONE_VFORK), so starting
 *   conmon or `runc start` costs the same whatever berthd's size. Node's child_process forks, which
 *   copies the page tables of the whole heap and, measured on this kind of machine, costs
 *   2 ms per spawn at berthd's ~100 MB RSS (1.5 ms at 47 MB, 4.8 ms at 170 MB).
 *   The child gets exactly the descriptors asked for (everything else is closed), default
 *   signal dispositions and an empty signal mask (Node ignores SIGPIPE; that must not be
 *   inherited), and optionally a new session.
 *   Exits are reaped on the main thread, so a pid that JavaScript may still signal is never
 *   reaped (and reusable) behind its back. The exit is seen through a pidfd (pidfd_open)
 *   watched by the event loop itself: it wakes the loop directly, with no thread per
 *   child (an exec probe's answer waited for a helper thread to be scheduled, then for
 *   the loop). Where pidfds are missing (kernels before 5.3), a helper thread waits with
 *   WNOWAIT and then wakes the loop, which reaps.
 *   spawnAsync makes the posix_spawn itself on a short-lived thread: the vfork'd wait until
 *   the child has exec'd (0.3 ms idle, several ms when the child waits for a CPU) no
 *   longer stops the event loop; its exit is then followed as spawn's.
 * - mount / umount: mount(2) and umount2(2) on libuv's thread pool, instead of forking
 *   /usr/bin/mount (~3 ms) for each container's overlay rootfs.
 * - pipe: pipe2(O_CLOEXEC), whose ends JavaScript wraps in net.Socket.
 * - socketInNetns: a TCP socket made inside a pod's network namespace (port forwarding).
 *   A short-lived thread enters the namespace with setns(2) (which only changes that
 *   thread) and makes the socket, which stays in the namespace it was made in; the
 *   connect is then made non-blocking from the event loop, so no thread waits on it.
 * - attachConmon: conmon's attach socket is SOCK_SEQPACKET, which libuv cannot carry.
 *   A thread bridges it to a stream socket pair whose other end JavaScript reads: each
 *   packet conmon sends ([pipe byte][data]) becomes a frame [pipe][u16 length][data];
 *   bytes JavaScript writes become packets of stdin; its end of input shuts down the
 *   sending side (conmon then closes the container's stdin when stdin_once); its close,
 *   or conmon's, ends the bridge.
 * - pinNamespaces: new network, IPC and UTS namespaces, each pinned by bind-mounting its
 *   nsfs file on a file, with a hostname set and, when asked, `lo` brought up (what the CNI
 *   loopback plugin does, one process less per pod): as pinUserns below, without the user
 *   namespace.
 * - pinUserns: a new user namespace with the given uid and gid maps, pinned by bind-mounting
 *   its nsfs file on a file (pods with hostUsers: false), and optionally new network, IPC
 *   and UTS namespaces owned by it (so root of the pod has capabilities over them), each
 *   pinned the same way, with a hostname set. A helper process is cloned into the new
 *   namespaces (CLONE_VM: no copy of berthd's page tables) and sets the hostname; berthd
 *   writes its maps (as root of the parent namespace, so gid_map needs no
 *   setgroups=deny), binds /proc/<pid>/ns/<kind>, then kills and reaps it.
 * - cloneMount: a bind mount made with the new mount API: open_tree(OPEN_TREE_CLONE,
 *   optionally AT_RECURSIVE), mount_setattr on the detached tree (MOUNT_ATTR_RDONLY and/or
 *   MOUNT_ATTR_IDMAP with a user namespace, through the whole tree with AT_RECURSIVE),
 *   move_mount onto the target. Idmapped and recursive read-only mounts, which runc 1.1
 *   cannot make, are prepared this way before runc sees the bundle. An idmap can only be
 *   set on a detached mount, so the clone is what makes it possible.
 * - notifySocket / datagramBind: the sd_notify protocol (systemd's Type=notify): one
 *   datagram of "KEY=VALUE" lines sent to $NOTIFY_SOCKET, a unix path or, with a
 *   leading '@', an abstract socket; Node has no unix datagram sockets. datagramBind
 *   makes a non-blocking bound datagram socket that receives such messages (tests).
 * - openPty / setWinsize: a terminal pair for `runc exec -t` in the foreground, which
 *   wants a terminal of its own as stdio (it relays it to the container's and follows
 *   its size on SIGWINCH); TIOCSWINSZ sets the size.
 * - mallocTrim: glibc gives each thread that mallocs (libuv's pool, the unpack workers)
 *   an arena of its own and keeps the pages a burst (a pull) filled there; malloc_trim(0)
 *   hands the free pages of every arena back to the kernel after such a burst.
 * - limitArenas: mallopt(M_ARENA_MAX): the most arenas glibc makes (its default is 8 per
 *   core); threads beyond it share the arenas there are.
 *
 * - sealedCopy: a copy of a file (the OCI runtime's binary) in a memfd sealed against any
 *   change. runc (and crun) copy themselves into such a memfd at every `create` and `exec`
 *   before entering the container (CVE-2019-5736: the container must not reach the host's
 *   binary through /proc/self/exe), unless /proc/self/exe already is a fully sealed memfd;
 *   run from this copy they skip that copy and a second exec of themselves.
 * - removeTree: `rm -rf` of one directory tree as a single job on libuv's pool (openat,
 *   fdopendir, unlinkat), never following a symlink and never entering another mount
 *   (EXDEV: a mount left inside, a bind mount of the same filesystem included, or the
 *   tree's top a mount point). Node's fs.rm({recursive}) queues each
 *   lstat, readdir, unlink and rmdir as a job of its own: a container's writable layer,
 *   its bundle and a pod's dir took some 60 round trips of the pool at each removal.
 *
 * - watchExit / unwatchExit: a pidfd (pidfd_open) of any process, not only a child, watched
 *   by the event loop: the callback runs once when the process exits. The exit monitor
 *   follows each container's shim (conmon, which berthd does not parent) this way instead
 *   of reading /proc/<pid>/stat of every shim every few seconds. Nothing is reaped. The
 *   descriptor is closed when the exit has been told, at unwatchExit, when the handle is
 *   collected, or when the environment goes away, whichever comes first.
 * - warmCgroupJoin: keeps the kernel's cgroup_threadgroup_rwsem on its fast-for-writers
 *   path while a runtime's create may move a container's init into its cgroups (see
 *   src/oci/cgroup-warmup.ts): a helper thread writes "0" to the cgroup.procs whose
 *   descriptor it was given every 4 ms until the deadline it was given, with no round
 *   trip of the event loop or of libuv's pool per write (measured: 110 ms of berthd's CPU
 *   per second of warming through fs/promises, against a few ms this way).
 *
 * Errors are thrown (or rejected) as Error objects with `code` (e.g. "ENOENT"), `errno`
 * and `syscall`, like Node's own.
 */
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <node_api.h>

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <dirent.h>
#include <unistd.h>
#include <uv.h>

#define MAX_FDS 16
#define MAX_STR 65536

#define NAPI_OK(call)                                                  \
  do {                                                                 \
    if ((call) != napi_ok) {                                           \
      napi_throw_error(env, NULL, "berth_sys: N-API call failed: " #call); \
      return NULL;                                                     \
    }                                                                  \
  } while (0)

static napi_value errno_error(napi_env env, int err, const char *syscall, const char *what) {
  const char *name = strerrorname_np(err);
  char msg[1024];
  snprintf(msg, sizeof msg, "%s %s: %s", syscall, what ? what : "", strerror(err));
  napi_value code, message, error, num, sc;
  napi_create_string_utf8(env, name ? name : "EUNKNOWN", NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message);
  napi_create_error(env, code, message, &error);
  napi_create_int32(env, -err, &num);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &sc);
  napi_set_named_property(env, error, "errno", num);
  napi_set_named_property(env, error, "syscall", sc);
  return error;
}

static napi_value throw_errno(napi_env env, int err, const char *syscall, const char *what) {
  napi_throw(env, errno_error(env, err, syscall, what));
  return NULL;
}

/* As throw_errno, for a malloc'd `what`, which is freed once the error names it. */
static napi_value throw_errno_free(napi_env env, int err, const char *syscall, char *what) {
  napi_value e = errno_error(env, err, syscall, what);
  free(what);
  napi_throw(env, e);
  return NULL;
}

/* The first `n` arguments of a call into `args` (undefined for those not passed); false
 * after throwing: a TypeError with `usage` when fewer than `n` were passed. */
static bool get_args(napi_env env, napi_callback_info info, size_t n, napi_value *args, const char *usage) {
  size_t argc = n;
  if (napi_get_cb_info(env, info, &argc, args, NULL, NULL) != napi_ok) {
    napi_throw_error(env, NULL, "berth_sys: N-API call failed: napi_get_cb_info");
    return false;
  }
  if (argc < n) {
    napi_throw_type_error(env, NULL, usage);
    return false;
  }
  return true;
}

/* A JavaScript string as a malloc'd C string (NULL after throwing). */
static char *get_string(napi_env env, napi_value v, const char *what) {
  size_t len = 0;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) {
    char msg[128];
    snprintf(msg, sizeof msg, "berth_sys: %s must be a string", what);
    napi_throw_type_error(env, NULL, msg);
    return NULL;
  }
  if (len > MAX_STR) {
    napi_throw_range_error(env, NULL, "berth_sys: string too long");
    return NULL;
  }
  char *s = malloc(len + 1);
  if (!s) {
    napi_throw_error(env, NULL, "berth_sys: out of memory");
    return NULL;
  }
  napi_get_value_string_utf8(env, v, s, len + 1, &len);
  if (strlen(s) != len) {
    free(s);
    napi_throw_type_error(env, NULL, "berth_sys: string holds a NUL byte");
    return NULL;
  }
  return s;
}

static void free_strv(char **v) {
  if (!v) return;
  for (char **p = v; *p; p++) free(*p);
  free(v);
}

/* A JavaScript array of strings as a NULL-terminated malloc'd vector (NULL after throwing). */
static char **get_strv(napi_env env, napi_value arr, const char *what) {
  bool is_array = false;
  uint32_t n = 0;
  if (napi_is_array(env, arr, &is_array) != napi_ok || !is_array || napi_get_array_length(env, arr, &n) != napi_ok || n > 4096) {
    char msg[128];
    snprintf(msg, sizeof msg, "berth_sys: %s must be an array of strings", what);
    napi_throw_type_error(env, NULL, msg);
    return NULL;
  }
  char **v = calloc(n + 1, sizeof(char *));
  if (!v) {
    napi_throw_error(env, NULL, "berth_sys: out of memory");
    return NULL;
  }
  for (uint32_t i = 0; i < n; i++) {
    napi_value e;
    napi_get_element(env, arr, i, &e);
    v[i] = get_string(env, e, what);
    if (!v[i]) {
      free_strv(v);
      return NULL;
    }
  }
  return v;
}

/* An integer from `lo` to `hi` (TypeError for a non-number, RangeError otherwise); false after throwing. */
static bool get_int_in(napi_env env, napi_value v, const char *what, double lo, double hi, int64_t *out) {
  napi_valuetype t;
  double d;
  char msg[160];
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number || napi_get_value_double(env, v, &d) != napi_ok) {
    snprintf(msg, sizeof msg, "berth_sys: %s must be a number", what);
    napi_throw_type_error(env, NULL, msg);
    return false;
  }
  if (!(d >= lo && d <= hi) || d != (double)(int64_t)d) {
    snprintf(msg, sizeof msg, "berth_sys: %s must be an integer from %.0f to %.0f", what, lo, hi);
    napi_throw_range_error(env, NULL, msg);
    return false;
  }
  *out = (int64_t)d;
  return true;
}

/* A boolean (TypeError otherwise); false after throwing. */
static bool get_bool(napi_env env, napi_value v, const char *what, bool *out) {
  if (napi_get_value_bool(env, v, out) == napi_ok) return true;
  char msg[128];
  snprintf(msg, sizeof msg, "berth_sys: %s must be a boolean", what);
  napi_throw_type_error(env, NULL, msg);
  return false;
}

/* ---- pipe() -> [readFd, writeFd] ---- */

static napi_value js_pipe(napi_env env, napi_callback_info info) {
  (void)info;
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return throw_errno(env, errno, "pipe2", NULL);
  napi_value arr, r, w;
  NAPI_OK(napi_create_array_with_length(env, 2, &arr));
  napi_create_int32(env, fds[0], &r);
  napi_create_int32(env, fds[1], &w);
  napi_set_element(env, arr, 0, r);
  napi_set_element(env, arr, 1, w);
  return arr;
}

/* ---- spawn(file, argv, envp, cwd|null, fds, setsid) -> { pid, exited: Promise<[code, signal]> } ---- */

struct child {
  pid_t pid;
  napi_deferred deferred;
  /* The thread's way: */
  napi_threadsafe_function tsfn;
};

/* The pidfd's way: the loop's handle on the child's pidfd. */
struct pidfd_watch {
  uv_poll_t poll;
  int fd;
  napi_env env;
  napi_async_context async;
  struct child *c;
  /* Node waits for the handle's close when the environment goes away first. */
  napi_async_cleanup_hook_handle cleanup;
  bool env_gone;
};

/* Reaps the exited child and settles its promise (on the main thread). */
static void settle_child(napi_env env, struct child *c) {
  {
    int status = 0;
    pid_t r;
    do r = waitpid(c->pid, &status, 0);
    while (r < 0 && errno == EINTR);
    napi_value result, code, sig;
    napi_create_array_with_length(env, 2, &result);
    if (r == c->pid && WIFEXITED(status)) {
      napi_create_int32(env, WEXITSTATUS(status), &code);
      napi_get_null(env, &sig);
    } else if (r == c->pid && WIFSIGNALED(status)) {
      napi_get_null(env, &code);
      napi_create_int32(env, WTERMSIG(status), &sig);
    } else {
      /* Reaped by someone else (a waitpid(-1) elsewhere in the process): unknown. */
      napi_get_null(env, &code);
      napi_get_null(env, &sig);
    }
    napi_set_element(env, result, 0, code);
    napi_set_element(env, result, 1, sig);
    napi_resolve_deferred(env, c->deferred, result);
  }
}

/* The thread's way, on the main thread once the child has exited. */
static void child_exited(napi_env env, napi_value js_cb, void *context, void *data) {
  (void)js_cb;
  (void)data;
  if (env != NULL) settle_child(env, context);
}

static void child_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  free(data);
}

static void *wait_thread(void *arg) {
  struct child *c = arg;
  siginfo_t si;
  int r;
  do {
    memset(&si, 0, sizeof si);
    r = waitid(P_PID, (id_t)c->pid, &si, WEXITED | WNOWAIT);
  } while (r < 0 && errno == EINTR);
  napi_call_threadsafe_function(c->tsfn, NULL, napi_tsfn_blocking);
  napi_release_threadsafe_function(c->tsfn, napi_tsfn_release);
  return NULL;
}

/* The pidfd's way: the handle is closed, so its descriptor can be. */
static void pidfd_closed(uv_handle_t *h) {
  struct pidfd_watch *w = h->data;
  close(w->fd);
  if (w->env_gone) napi_remove_async_cleanup_hook(w->cleanup);
  free(w);
}

/* The pidfd's way, when the environment goes away (a worker's end, the process's exit)
 * before the child has exited: the handle is closed, and Node waits for that (a loop may
 * not end with it open); the child is left to whoever outlives the environment. */
static void pidfd_env_gone(napi_async_cleanup_hook_handle handle, void *arg) {
  struct pidfd_watch *w = arg;
  w->cleanup = handle;
  w->env_gone = true;
  uv_poll_stop(&w->poll);
  free(w->c);
  uv_close((uv_handle_t *)&w->poll, pidfd_closed);
}

/* The pidfd's way: the child has exited. Settled within a callback scope, so that what the
 * promise's reactions do (and the microtasks they queue) runs now, as for any I/O callback. */
static void pidfd_readable(uv_poll_t *h, int status, int events) {
  (void)status;
  (void)events;
  struct pidfd_watch *w = h->data;
  uv_poll_stop(h);
  napi_env env = w->env;
  napi_remove_async_cleanup_hook(w->cleanup);
  napi_handle_scope hs;
  napi_value resource;
  napi_callback_scope cs;
  if (napi_open_handle_scope(env, &hs) == napi_ok) {
    bool scoped = napi_create_object(env, &resource) == napi_ok && napi_open_callback_scope(env, resource, w->async, &cs) == napi_ok;
    settle_child(env, w->c);
    if (scoped) napi_close_callback_scope(env, cs);
    napi_close_handle_scope(env, hs);
  }
  napi_async_destroy(env, w->async);
  free(w->c);
  uv_close((uv_handle_t *)h, pidfd_closed);
}

/* Watches `c`'s child through a pidfd on the loop, which then owns `c`; false (and
 * nothing kept) where it cannot. */
static bool watch_pidfd(napi_env env, struct child *c) {
  uv_loop_t *loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) return false;
  struct pidfd_watch *w = calloc(1, sizeof *w);
  if (!w) return false;
  w->fd = (int)syscall(SYS_pidfd_open, c->pid, 0);
  if (w->fd < 0) {
    free(w);
    return false;
  }
  napi_value name;
  if (napi_create_string_utf8(env, "berth_sys.wait", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_async_init(env, NULL, name, &w->async) != napi_ok) {
    close(w->fd);
    free(w);
    return false;
  }
  w->env = env;
  w->c = c;
  w->poll.data = w;
  if (uv_poll_init(loop, &w->poll, w->fd) != 0) {
    napi_async_destroy(env, w->async);
    close(w->fd);
    free(w);
    return false;
  }
  if (uv_poll_start(&w->poll, UV_READABLE, pidfd_readable) != 0 || napi_add_async_cleanup_hook(env, pidfd_env_gone, w, &w->cleanup) != napi_ok) {
    uv_poll_stop(&w->poll);
    napi_async_destroy(env, w->async);
    uv_close((uv_handle_t *)&w->poll, pidfd_closed);
    return false;
  }
  return true;
}

/* Starts fn(arg) on a detached thread with a 64 KiB stack; 0 or pthread_create's error. */
static int start_detached(void *(*fn)(void *), void *arg) {
  pthread_t th;
  pthread_attr_t ta;
  pthread_attr_init(&ta);
  pthread_attr_setdetachstate(&ta, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&ta, 64 * 1024);
  int err = pthread_create(&th, &ta, fn, arg);
  pthread_attr_destroy(&ta);
  return err;
}

/* Follows the exit of child c, whose promise is made: through a pidfd the loop watches (the
 * loop then owns c), else a detached thread that waits for it (c->tsfn, which then owns c;
 * *tsfn_made says it was made). 0, or the errno with *failed naming the call that failed. */
static int follow_exit(napi_env env, struct child *c, const char **failed, bool *tsfn_made) {
  if (watch_pidfd(env, c)) return 0;
  napi_value name;
  napi_create_string_utf8(env, "berth_sys.wait", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, c, child_finalize, c, child_exited, &c->tsfn) != napi_ok) {
    *failed = "napi_create_threadsafe_function";
    return ENOMEM;
  }
  *tsfn_made = true;
  int perr = start_detached(wait_thread, c);
  if (perr != 0) {
    *failed = "pthread_create";
    return perr;
  }
  return 0;
}

/* What a spawn takes, parsed on the main thread: strings copied, and each descriptor the
 * child gets duplicated (close-on-exec, above every target number), so that the caller may
 * close its own at once and the spawn may happen later on another thread. */
struct spawn_args {
  char *file, *cwd;
  char **argv, **envp;
  int tmp[MAX_FDS];
  uint32_t nfds;
  bool setsid_;
};

/* Closes berthd's duplicates of the child's descriptors. */
static void spawn_args_close_fds(struct spawn_args *a) {
  for (uint32_t i = 0; i < MAX_FDS; i++)
    if (a->tmp[i] >= 0) {
      close(a->tmp[i]);
      a->tmp[i] = -1;
    }
}

static void spawn_args_free(struct spawn_args *a) {
  spawn_args_close_fds(a);
  free(a->file);
  free(a->cwd);
  free_strv(a->argv);
  free_strv(a->envp);
  a->file = a->cwd = NULL;
  a->argv = a->envp = NULL;
}

/* Parses (file, argv, envp, cwd|null, fds, setsid) into `a`; false after throwing (with `a` freed). */
static bool spawn_args_parse(napi_env env, napi_callback_info info, const char *usage, struct spawn_args *a) {
  napi_value args[6];
  memset(a, 0, sizeof *a);
  for (int i = 0; i < MAX_FDS; i++) a->tmp[i] = -1;
  if (!get_args(env, info, 6, args, usage)) return false;
  int src[MAX_FDS];
  if (!(a->file = get_string(env, args[0], "file"))) goto fail;
  if (!(a->argv = get_strv(env, args[1], "argv"))) goto fail;
  if (!(a->envp = get_strv(env, args[2], "envp"))) goto fail;
  napi_valuetype t;
  napi_typeof(env, args[3], &t);
  if (t != napi_null && t != napi_undefined && !(a->cwd = get_string(env, args[3], "cwd"))) goto fail;
  bool is_array = false;
  napi_is_array(env, args[4], &is_array);
  if (!is_array || napi_get_array_length(env, args[4], &a->nfds) != napi_ok || a->nfds > MAX_FDS) {
    a->nfds = 0;
    napi_throw_type_error(env, NULL, "berth_sys.spawn: fds must be an array of at most 16 descriptors (-1: /dev/null)");
    goto fail;
  }
  for (uint32_t i = 0; i < a->nfds; i++) {
    napi_value e;
    napi_get_element(env, args[4], i, &e);
    int64_t fd;
    if (!get_int_in(env, e, "spawn: each of fds", -1, INT32_MAX, &fd)) goto fail;
    src[i] = (int)fd;
  }
  if (!get_bool(env, args[5], "spawn: setsid", &a->setsid_)) goto fail;
  /* Each source is first copied above every target number, so that no dup2 overwrites a
   * source still to be used and none is a dup2 onto itself (which would keep CLOEXEC). */
  for (uint32_t i = 0; i < a->nfds; i++) {
    if (src[i] < 0) continue;
    a->tmp[i] = fcntl(src[i], F_DUPFD_CLOEXEC, MAX_FDS);
    if (a->tmp[i] < 0) {
      throw_errno(env, errno, "fcntl", "F_DUPFD_CLOEXEC");
      goto fail;
    }
  }
  return true;
fail:
  spawn_args_free(a);
  return false;
}

/* posix_spawn(p) of `a`: its descriptors as 0..nfds-1 (-1: /dev/null), everything else
 * closed, default signal dispositions, an empty signal mask, optionally a new session.
 * Returns 0 with *pid set, or an errno with *failed naming the step. Touches no N-API. */
static int spawn_args_run(const struct spawn_args *a, bool search_path, pid_t *pid, const char **failed) {
  posix_spawnattr_t attr;
  posix_spawn_file_actions_t actions;
  int err = posix_spawn_file_actions_init(&actions);
  if (err) {
    *failed = "posix_spawn_file_actions_init";
    return err;
  }
  for (uint32_t i = 0; i < a->nfds && !err; i++) {
    if (a->tmp[i] < 0) err = posix_spawn_file_actions_addopen(&actions, (int)i, "/dev/null", O_RDWR, 0);
    else err = posix_spawn_file_actions_adddup2(&actions, a->tmp[i], (int)i);
  }
  if (!err) err = posix_spawn_file_actions_addclosefrom_np(&actions, (int)a->nfds);
  if (!err && a->cwd) err = posix_spawn_file_actions_addchdir_np(&actions, a->cwd);
  if (err) {
    posix_spawn_file_actions_destroy(&actions);
    *failed = "posix_spawn_file_actions";
    return err;
  }
  err = posix_spawnattr_init(&attr);
  if (err) {
    posix_spawn_file_actions_destroy(&actions);
    *failed = "posix_spawnattr_init";
    return err;
  }
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
  if (a->setsid_) flags |= POSIX_SPAWN_SETSID;
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setflags(&attr, flags);
  err = search_path ? posix_spawnp(pid, a->file, &actions, &attr, a->argv, a->envp) : posix_spawn(pid, a->file, &actions, &attr, a->argv, a->envp);
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  if (err) *failed = "spawn";
  return err;
}

static napi_value js_spawn(napi_env env, napi_callback_info info) {
  struct spawn_args a;
  if (!spawn_args_parse(env, info, "berth_sys.spawn(file, argv, envp, cwd, fds, setsid)", &a)) return NULL;
  napi_value ret = NULL;
  const char *file = a.file;
  pid_t pid;
  const char *spawn_failed = NULL;
  int err = spawn_args_run(&a, true, &pid, &spawn_failed);
  if (err) {
    throw_errno(env, err, spawn_failed, file);
    goto out;
  }

  /* The child runs: should its waiter not be made (no memory, no thread), it is killed and
   * reaped here, and the call throws, so that no child is left that nobody reaps. */
  struct child *c = calloc(1, sizeof *c);
  napi_value promise, result, pidv;
  int fail = 0;
  const char *failed = NULL;
  bool tsfn_made = false;
  if (!c) {
    fail = ENOMEM;
    failed = "calloc";
  } else {
    c->pid = pid;
    if (napi_create_promise(env, &c->deferred, &promise) != napi_ok) {
      fail = ENOMEM;
      failed = "napi_create_promise";
    } else {
      fail = follow_exit(env, c, &failed, &tsfn_made);
    }
  }
  if (fail) {
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
    if (c) {
      napi_value e = errno_error(env, fail, failed, file);
      napi_reject_deferred(env, c->deferred, e);
      /* child_finalize frees c once the function is released; without one, it is freed here. */
      if (tsfn_made) napi_release_threadsafe_function(c->tsfn, napi_tsfn_abort);
      else free(c);
    }
    throw_errno(env, fail, failed, file);
    goto out;
  }

  napi_create_object(env, &result);
  napi_create_int32(env, pid, &pidv);
  napi_set_named_property(env, result, "pid", pidv);
  napi_set_named_property(env, result, "exited", promise);
  ret = result;

out:
  spawn_args_free(&a);
  return ret;
}

/* ---- spawnAsync(file, argv, envp, cwd|null, fds, setsid) -> Promise<{ pid, exited }> ----
 *
 * The same spawn as spawn(), made off the main thread: posix_spawn waits (vfork) until the
 * child has exec'd, which on a busy machine is until the scheduler runs the child, 0.3 ms
 * to several ms that the event loop would stand still. A short-lived thread spawns the
 * child and wakes the loop, which then follows the child's exit as spawn() does (a pidfd
 * on the loop, or a waiting thread where pidfds are missing) and reaps it. `file` must be
 * a path (no PATH search: getenv on another thread could race a change of the environment). */

struct async_spawn {
  struct spawn_args a;
  pid_t pid;
  int err;
  const char *failed;
  napi_deferred started;
  napi_threadsafe_function tsfn;
};

/* A settled promise nobody holds: resolved, since a rejection nobody handles ends the process. */
static void settle_unheld(napi_env env, napi_deferred d) {
  napi_value undef;
  napi_get_undefined(env, &undef);
  napi_resolve_deferred(env, d, undef);
}

/* On the main thread, once the spawn was made (or failed): the child's exit is followed as
 * spawn()'s is, and the promise settles with { pid, exited }. Should that be impossible (no
 * memory, no thread), the child is killed and reaped here and the promise rejects, so that
 * no child is left that nobody reaps. */
static void async_spawned(napi_env env, napi_value js_cb, void *context, void *data) {
  (void)js_cb;
  (void)data;
  struct async_spawn *s = context;
  if (env == NULL) {
    /* The environment is going (a worker ending): nobody will follow a child spawned for it. */
    if (!s->err) {
      kill(s->pid, SIGKILL);
      while (waitpid(s->pid, NULL, 0) < 0 && errno == EINTR) {
      }
    }
    return;
  }
  if (s->err) {
    napi_reject_deferred(env, s->started, errno_error(env, s->err, s->failed, s->a.file));
    return;
  }
  struct child *c = calloc(1, sizeof *c);
  napi_value exited;
  int fail = 0;
  const char *failed = NULL;
  bool tsfn_made = false, promise_made = false;
  if (!c) {
    fail = ENOMEM;
    failed = "calloc";
  } else {
    c->pid = s->pid;
    if (napi_create_promise(env, &c->deferred, &exited) != napi_ok) {
      fail = ENOMEM;
      failed = "napi_create_promise";
    } else {
      promise_made = true;
      fail = follow_exit(env, c, &failed, &tsfn_made);
    }
  }
  if (fail) {
    kill(s->pid, SIGKILL);
    while (waitpid(s->pid, NULL, 0) < 0 && errno == EINTR) {
    }
    if (c) {
      if (promise_made) settle_unheld(env, c->deferred);
      if (tsfn_made) napi_release_threadsafe_function(c->tsfn, napi_tsfn_abort);
      else free(c);
    }
    napi_reject_deferred(env, s->started, errno_error(env, fail, failed, s->a.file));
    return;
  }
  napi_value result, pidv;
  napi_create_object(env, &result);
  napi_create_int32(env, s->pid, &pidv);
  napi_set_named_property(env, result, "pid", pidv);
  napi_set_named_property(env, result, "exited", exited);
  napi_resolve_deferred(env, s->started, result);
}

static void async_spawn_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  struct async_spawn *s = data;
  spawn_args_free(&s->a);
  free(s);
}

static void *spawn_thread(void *arg) {
  struct async_spawn *s = arg;
  /* Signals are the main thread's to take. */
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);
  s->err = spawn_args_run(&s->a, false, &s->pid, &s->failed);
  /* The child has its copies (or there is none): ours are closed now, not at finalize. */
  spawn_args_close_fds(&s->a);
  napi_call_threadsafe_function(s->tsfn, NULL, napi_tsfn_blocking);
  napi_release_threadsafe_function(s->tsfn, napi_tsfn_release);
  return NULL;
}

static napi_value js_spawn_async(napi_env env, napi_callback_info info) {
  struct async_spawn *s = calloc(1, sizeof *s);
  if (!s) return throw_errno(env, ENOMEM, "calloc", NULL);
  if (!spawn_args_parse(env, info, "berth_sys.spawnAsync(file, argv, envp, cwd, fds, setsid)", &s->a)) {
    free(s);
    return NULL;
  }
  if (strchr(s->a.file, '/') == NULL) {
    spawn_args_free(&s->a);
    free(s);
    napi_throw_type_error(env, NULL, "berth_sys.spawnAsync: file must be a path (holding a '/')");
    return NULL;
  }
  napi_value promise, name;
  if (napi_create_promise(env, &s->started, &promise) != napi_ok) {
    spawn_args_free(&s->a);
    free(s);
    return throw_errno(env, ENOMEM, "napi_create_promise", NULL);
  }
  napi_create_string_utf8(env, "berth_sys.spawnAsync", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, s, async_spawn_finalize, s, async_spawned, &s->tsfn) != napi_ok) {
    napi_value e = errno_error(env, ENOMEM, "napi_create_threadsafe_function", s->a.file);
    settle_unheld(env, s->started);
    spawn_args_free(&s->a);
    free(s);
    napi_throw(env, e);
    return NULL;
  }
  /* posix_spawn runs the child on a stack of its own (mmap'd by glibc), so this one stays small. */
  int perr = start_detached(spawn_thread, s);
  if (perr != 0) {
    /* Nothing was started. The promise is settled (nobody gets it), the duplicated
     * descriptors are closed now, and the call throws; async_spawn_finalize frees s. */
    napi_value e = errno_error(env, perr, "pthread_create", s->a.file);
    settle_unheld(env, s->started);
    spawn_args_free(&s->a);
    napi_release_threadsafe_function(s->tsfn, napi_tsfn_abort);
    napi_throw(env, e);
    return NULL;
  }
  return promise;
}

/* ---- mount(source, target, fstype, flags, data) / umount(target, flags): Promise<void> ---- */

struct mount_work {
  napi_async_work work;
  napi_deferred deferred;
  char *source, *target, *fstype, *data;
  unsigned long flags;
  bool unmount;
  int err;
};

static void mount_execute(napi_env env, void *arg) {
  (void)env;
  struct mount_work *w = arg;
  int r = w->unmount ? umount2(w->target, (int)w->flags) : mount(w->source, w->target, w->fstype, w->flags, w->data);
  w->err = r == 0 ? 0 : errno;
}

/* Settles the promise of a pool job that answers undefined or an errno: rejected when the
 * job was cancelled (`what` names it) or failed (`syscall` on `path`), else resolved. */
static void settle_void_work(napi_env env, napi_status status, napi_deferred deferred, int err, const char *what, const char *syscall, const char *path) {
  if (status != napi_ok) {
    char msg[96];
    snprintf(msg, sizeof msg, "berth_sys: %s work was cancelled", what);
    napi_value e, m;
    napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &m);
    napi_create_error(env, NULL, m, &e);
    napi_reject_deferred(env, deferred, e);
  } else if (err) {
    napi_reject_deferred(env, deferred, errno_error(env, err, syscall, path));
  } else {
    napi_value u;
    napi_get_undefined(env, &u);
    napi_resolve_deferred(env, deferred, u);
  }
}

static void mount_complete(napi_env env, napi_status status, void *arg) {
  struct mount_work *w = arg;
  settle_void_work(env, status, w->deferred, w->err, "mount", w->unmount ? "umount2" : "mount", w->target);
  napi_delete_async_work(env, w->work);
  free(w->source);
  free(w->target);
  free(w->fstype);
  free(w->data);
  free(w);
}

/* Queues `execute` on libuv's pool; `complete` settles *deferred on the main thread. */
static napi_value queue_work(napi_env env, const char *what, napi_async_execute_callback execute, napi_async_complete_callback complete, void *data,
                             napi_async_work *work, napi_deferred *deferred) {
  napi_value promise, name;
  NAPI_OK(napi_create_promise(env, deferred, &promise));
  napi_create_string_utf8(env, what, NAPI_AUTO_LENGTH, &name);
  NAPI_OK(napi_create_async_work(env, NULL, name, execute, complete, data, work));
  NAPI_OK(napi_queue_async_work(env, *work));
  return promise;
}

static napi_value queue_mount(napi_env env, struct mount_work *w) {
  return queue_work(env, "berth_sys.mount", mount_execute, mount_complete, w, &w->work, &w->deferred);
}

static napi_value js_mount(napi_env env, napi_callback_info info) {
  napi_value args[5];
  if (!get_args(env, info, 5, args, "berth_sys.mount(source, target, fstype, flags, data)")) return NULL;
  struct mount_work *w = calloc(1, sizeof *w);
  if (!w) return throw_errno(env, ENOMEM, "mount", NULL);
  int64_t flags = 0;
  if (!(w->source = get_string(env, args[0], "source")) || !(w->target = get_string(env, args[1], "target")) ||
      !(w->fstype = get_string(env, args[2], "fstype")) || !get_int_in(env, args[3], "mount: flags", 0, UINT32_MAX, &flags) ||
      !(w->data = get_string(env, args[4], "data"))) {
    free(w->source);
    free(w->target);
    free(w->fstype);
    free(w);
    return NULL;
  }
  w->flags = (unsigned long)flags;
  return queue_mount(env, w);
}

static napi_value js_umount(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value args[2];
  NAPI_OK(napi_get_cb_info(env, info, &argc, args, NULL, NULL));
  struct mount_work *w = calloc(1, sizeof *w);
  if (!w) return throw_errno(env, ENOMEM, "umount2", NULL);
  int64_t flags = 0;
  if (argc < 2 || !(w->target = get_string(env, args[0], "target")) || !get_int_in(env, args[1], "umount: flags", 0, INT32_MAX, &flags)) {
    if (argc < 2) napi_throw_type_error(env, NULL, "berth_sys.umount(target, flags)");
    free(w->target);
    free(w);
    return NULL;
  }
  w->flags = (unsigned long)flags;
  w->unmount = true;
  return queue_mount(env, w);
}

/* ---- removeTree(path): Promise<void>: rm -rf of one tree, on the pool ---- */

/* Deeper trees are left to the caller's fallback (a descriptor per level is held). */
#define REMOVE_TREE_MAX_DEPTH 64

struct remove_tree_work {
  napi_async_work work;
  napi_deferred deferred;
  char *path;
  int err;
};

/*
 * Where a file lives: its device and, where the kernel tells (statx STATX_MNT_ID, Linux
 * 5.8), its mount. The device alone misses a bind mount of the same filesystem.
 */
struct tree_place {
  dev_t dev;
  uint64_t mnt;
  bool has_mnt;
  mode_t mode;
};

static int place_of(int dirfd, const char *path, int flags, struct tree_place *p) {
  struct statx sx;
  if (statx(dirfd, path, flags | AT_SYMLINK_NOFOLLOW, STATX_TYPE | STATX_MNT_ID, &sx) != 0) return errno;
  p->dev = makedev(sx.stx_dev_major, sx.stx_dev_minor);
  p->has_mnt = (sx.stx_mask & STATX_MNT_ID) != 0;
  p->mnt = p->has_mnt ? sx.stx_mnt_id : 0;
  p->mode = sx.stx_mode;
  return 0;
}

static bool same_place(const struct tree_place *a, const struct tree_place *b) {
  return a->dev == b->dev && (!a->has_mnt || !b->has_mnt || a->mnt == b->mnt);
}

/* Removes `name` in directory `parent` and, when it is a directory in the same mount as
 * `top`, everything in it; EXDEV for a directory in another mount (nothing of it removed).
 * 0 or an errno. */
static int remove_tree_at(int parent, const char *name, bool dir_hint, const struct tree_place *top, int depth) {
  if (!dir_hint) {
    if (unlinkat(parent, name, 0) == 0 || errno == ENOENT) return 0;
    /* Linux says EISDIR for a directory (POSIX allows EPERM). */
    if (errno != EISDIR && errno != EPERM) return errno;
  }
  if (depth >= REMOVE_TREE_MAX_DEPTH) return ELOOP;
  int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    if (e == ENOENT) return 0;
    /* A d_type that said directory, but it is none (replaced meanwhile): unlink it. */
    if (dir_hint && (e == ENOTDIR || e == ELOOP)) return remove_tree_at(parent, name, false, top, depth);
    return e;
  }
  struct tree_place here;
  int pe = place_of(fd, "", AT_EMPTY_PATH, &here);
  if (pe != 0) {
    close(fd);
    return pe;
  }
  if (!same_place(&here, top)) {
    close(fd);
    return EXDEV;
  }
  DIR *d = fdopendir(fd);
  if (!d) {
    int e = errno;
    close(fd);
    return e;
  }
  int err = 0;
  /* Entries removed while the directory is read may shift what readdir returns: read it
   * again until rmdir succeeds (a few passes at most). */
  for (int pass = 0; pass < 4; pass++) {
    if (pass > 0) rewinddir(d);
    struct dirent *ent;
    errno = 0;
    while ((ent = readdir(d)) != NULL) {
      const char *n = ent->d_name;
      if (n[0] == '.' && (n[1] == 0 || (n[1] == '.' && n[2] == 0))) continue;
      err = remove_tree_at(fd, n, ent->d_type == DT_DIR, top, depth + 1);
      if (err) break;
      errno = 0;
    }
    if (!err && errno != 0) err = errno;
    if (err) break;
    if (unlinkat(parent, name, AT_REMOVEDIR) == 0 || errno == ENOENT) {
      closedir(d);
      return 0;
    }
    err = errno;
    if (err != ENOTEMPTY && err != EEXIST) break;
  }
  closedir(d);
  return err;
}

static void remove_tree_execute(napi_env env, void *arg) {
  (void)env;
  struct remove_tree_work *w = arg;
  struct tree_place top;
  int e = place_of(AT_FDCWD, w->path, 0, &top);
  if (e != 0) {
    w->err = e == ENOENT ? 0 : e;
    return;
  }
  if (!S_ISDIR(top.mode)) {
    w->err = unlink(w->path) == 0 || errno == ENOENT ? 0 : errno;
    return;
  }
  /* The tree's top must not be a mount point either: its parent's place is the reference. */
  char *slash = strrchr(w->path, '/');
  struct tree_place parent;
  if (slash && slash != w->path) {
    *slash = 0;
    e = place_of(AT_FDCWD, w->path, 0, &parent);
    *slash = '/';
  } else {
    e = place_of(AT_FDCWD, "/", 0, &parent);
  }
  if (e != 0) {
    w->err = e;
    return;
  }
  if (!same_place(&top, &parent)) {
    w->err = EXDEV;
    return;
  }
  w->err = remove_tree_at(AT_FDCWD, w->path, true, &top, 0);
}

static void remove_tree_complete(napi_env env, napi_status status, void *arg) {
  struct remove_tree_work *w = arg;
  settle_void_work(env, status, w->deferred, w->err, "removeTree", "removeTree", w->path);
  napi_delete_async_work(env, w->work);
  free(w->path);
  free(w);
}

static napi_value js_remove_tree(napi_env env, napi_callback_info info) {
  napi_value args[1];
  if (!get_args(env, info, 1, args, "berth_sys.removeTree(path)")) return NULL;
  struct remove_tree_work *w = calloc(1, sizeof *w);
  if (!w) return throw_errno(env, ENOMEM, "removeTree", NULL);
  if (!(w->path = get_string(env, args[0], "path"))) {
    free(w);
    return NULL;
  }
  if (w->path[0] != '/') {
    free(w->path);
    free(w);
    napi_throw_type_error(env, NULL, "berth_sys.removeTree: path must be absolute");
    return NULL;
  }
  return queue_work(env, "berth_sys.removeTree", remove_tree_execute, remove_tree_complete, w, &w->work, &w->deferred);
}

/* ---- pinUserns(pinPath, uidMap, gidMap) / cloneMount(source, target, recursive, readonly, usernsPath|null): Promise<void> ---- */

struct userns_work {
  napi_async_work work;
  napi_deferred deferred;
  char *pin, *uid_map, *gid_map;       /* pinUserns */
  char *ns_pins[3];                    /* pinUserns: net, ipc, uts pins owned by the new namespace, or NULL */
  char *hostname;                      /* pinUserns: set in the new UTS namespace, or NULL */
  bool loopback_up;                    /* pinNamespaces: bring `lo` of the new network namespace up */
  char *source, *target, *userns_path; /* cloneMount */
  bool recursive, readonly, clone_mount;
  int err;
  const char *syscall;
};

/* The helper: sets the hostname (it holds CAP_SYS_ADMIN over the UTS namespace its own
 * user namespace owns), brings `lo` of its new network namespace up when asked, reports
 * the result on the pipe (errno, and which step of bringing `lo` up failed, 0 for the
 * hostname), then waits to be killed. */
struct userns_child_arg {
  const char *hostname;
  bool loopback_up;
  int report;
  pid_t parent;
};

/* Sets IFF_UP on `lo` of the calling thread's network namespace (the kernel then gives it
 * 127.0.0.1/8 and ::1): what the CNI loopback plugin does, without a process. Returns 0, or
 * an errno with `*step` set to the call that failed (one of the LOOPBACK_* below). */
enum { LOOPBACK_SOCKET = 1, LOOPBACK_GET_FLAGS, LOOPBACK_SET_FLAGS };
static const char *const loopback_steps[] = {NULL, "socket AF_INET (to bring lo up)", "ioctl SIOCGIFFLAGS lo", "ioctl SIOCSIFFLAGS lo"};

static int loopback_up(int *step) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) {
    *step = LOOPBACK_SOCKET;
    return errno;
  }
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  int err = 0;
  if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0) {
    err = errno;
    *step = LOOPBACK_GET_FLAGS;
  } else if (!(ifr.ifr_flags & IFF_UP)) {
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0) {
      err = errno;
      *step = LOOPBACK_SET_FLAGS;
    }
  }
  close(s);
  return err;
}

static int userns_child(void *arg) {
  struct userns_child_arg *a = arg;
  /* berthd killed (kill -9) while the pins are made must not leave this child paused for
   * ever, holding its namespaces and a copy of berthd's descriptors (its lock files among
   * them). Its parent is the pool thread, which lives as long as berthd. */
  if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != a->parent) _exit(1);
  int report[2] = {0, 0};
  if (a->hostname && sethostname(a->hostname, strlen(a->hostname)) != 0) report[0] = errno;
  if (!report[0] && a->loopback_up) report[0] = loopback_up(&report[1]);
  if (write(a->report, report, sizeof report) != sizeof report) _exit(1);
  for (;;) pause();
  return 0;
}

static const int ns_pin_flags[3] = {CLONE_NEWNET, CLONE_NEWIPC, CLONE_NEWUTS};
static const char *const ns_pin_names[3] = {"net", "ipc", "uts"};

static int write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  size_t len = strlen(text);
  ssize_t n = write(fd, text, len);
  int err = errno;
  close(fd);
  if (n < 0) {
    errno = err;
    return -1;
  }
  if ((size_t)n != len) {
    errno = EIO;
    return -1;
  }
  return 0;
}

static void pin_userns(struct userns_work *w) {
  const size_t stack_size = 64 * 1024;
  int report[2];
  if (pipe2(report, O_CLOEXEC) != 0) {
    w->err = errno;
    w->syscall = "pipe2";
    return;
  }
  char *stack = malloc(stack_size);
  if (!stack) {
    close(report[0]);
    close(report[1]);
    w->err = ENOMEM;
    w->syscall = "malloc";
    return;
  }
  /* One clone: the net, ipc and uts namespaces it makes are owned by the new user namespace
   * (pinUserns), or by berthd's own (pinNamespaces: no uid map given). */
  int flags = CLONE_VM | SIGCHLD;
  if (w->uid_map) flags |= CLONE_NEWUSER;
  for (int i = 0; i < 3; i++)
    if (w->ns_pins[i]) flags |= ns_pin_flags[i];
  struct userns_child_arg arg = {.hostname = w->hostname, .loopback_up = w->loopback_up, .report = report[1], .parent = getpid()};
  pid_t pid = clone(userns_child, stack + stack_size, flags, &arg);
  close(report[1]);
  if (pid < 0) {
    w->err = errno;
    w->syscall = "clone";
    close(report[0]);
    free(stack);
    return;
  }
  int child_report[2] = {0, 0};
  ssize_t n;
  do n = read(report[0], child_report, sizeof child_report);
  while (n < 0 && errno == EINTR);
  close(report[0]);
  if (n != sizeof child_report) {
    w->err = EIO;
    w->syscall = "clone";
  } else if (child_report[0]) {
    w->err = child_report[0];
    w->syscall = child_report[1] >= LOOPBACK_SOCKET && child_report[1] <= LOOPBACK_SET_FLAGS ? loopback_steps[child_report[1]] : "sethostname";
  }
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/uid_map", (int)pid);
  if (!w->err && w->uid_map && write_file(path, w->uid_map) != 0) {
    w->err = errno;
    w->syscall = "write uid_map";
  }
  snprintf(path, sizeof path, "/proc/%d/gid_map", (int)pid);
  if (!w->err && w->gid_map && write_file(path, w->gid_map) != 0) {
    w->err = errno;
    w->syscall = "write gid_map";
  }
  /* Pins made before a failure are the caller's to remove, as with any partial pin. */
  snprintf(path, sizeof path, "/proc/%d/ns/user", (int)pid);
  if (!w->err && w->pin && mount(path, w->pin, NULL, MS_BIND, NULL) != 0) {
    w->err = errno;
    w->syscall = "mount";
  }
  for (int i = 0; i < 3 && !w->err; i++) {
    if (!w->ns_pins[i]) continue;
    snprintf(path, sizeof path, "/proc/%d/ns/%s", (int)pid, ns_pin_names[i]);
    if (mount(path, w->ns_pins[i], NULL, MS_BIND, NULL) != 0) {
      w->err = errno;
      w->syscall = "mount";
    }
  }
  kill(pid, SIGKILL);
  int r;
  do r = waitpid(pid, NULL, __WALL);
  while (r < 0 && errno == EINTR);
  free(stack);
}

static void clone_mount(struct userns_work *w) {
  unsigned int rec = w->recursive ? AT_RECURSIVE : 0;
  int ns = -1;
  if (w->userns_path && (ns = open(w->userns_path, O_RDONLY | O_CLOEXEC)) < 0) {
    w->err = errno;
    w->syscall = "open";
    return;
  }
  int tree = open_tree(AT_FDCWD, w->source, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | rec);
  if (tree < 0) {
    w->err = errno;
    w->syscall = "open_tree";
  } else {
    struct mount_attr attr = {0};
    if (w->readonly) attr.attr_set |= MOUNT_ATTR_RDONLY;
    if (ns >= 0) {
      attr.attr_set |= MOUNT_ATTR_IDMAP;
      attr.userns_fd = (uint64_t)ns;
    }
    if (attr.attr_set && mount_setattr(tree, "", AT_EMPTY_PATH | rec, &attr, sizeof attr) != 0) {
      w->err = errno;
      w->syscall = "mount_setattr";
    } else if (move_mount(tree, "", AT_FDCWD, w->target, MOVE_MOUNT_F_EMPTY_PATH) != 0) {
      w->err = errno;
      w->syscall = "move_mount";
    }
    /* Closing a detached tree that was not moved unmounts it. */
    close(tree);
  }
  if (ns >= 0) close(ns);
}

static void userns_execute(napi_env env, void *arg) {
  (void)env;
  struct userns_work *w = arg;
  if (w->clone_mount) clone_mount(w);
  else pin_userns(w);
}

static void userns_complete(napi_env env, napi_status status, void *arg) {
  struct userns_work *w = arg;
  const char *what = w->clone_mount ? w->target : w->pin;
  for (int i = 0; i < 3 && !what; i++) what = w->ns_pins[i];
  if (status != napi_ok || w->err) {
    napi_reject_deferred(env, w->deferred, errno_error(env, status != napi_ok ? ECANCELED : w->err, w->syscall ? w->syscall : "mount", what));
  } else {
    napi_value u;
    napi_get_undefined(env, &u);
    napi_resolve_deferred(env, w->deferred, u);
  }
  napi_delete_async_work(env, w->work);
  free(w->pin);
  free(w->uid_map);
  free(w->gid_map);
  for (int i = 0; i < 3; i++) free(w->ns_pins[i]);
  free(w->hostname);
  free(w->source);
  free(w->target);
  free(w->userns_path);
  free(w);
}

/* An optional string argument: NULL for null/undefined, *ok false after throwing. */
static char *get_optional_string(napi_env env, napi_value v, const char *what, bool *ok) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t == napi_null || t == napi_undefined) return NULL;
  char *s = get_string(env, v, what);
  if (!s) *ok = false;
  return s;
}

static napi_value js_pin_userns(napi_env env, napi_callback_info info) {
  napi_value args[7];
  if (!get_args(env, info, 7, args, "berth_sys.pinUserns(pinPath, uidMap, gidMap, netPin, ipcPin, utsPin, hostname)")) return NULL;
  struct userns_work *w = calloc(1, sizeof *w);
  if (!w) return throw_errno(env, ENOMEM, "pinUserns", NULL);
  bool ok = (w->pin = get_string(env, args[0], "pinPath")) && (w->uid_map = get_string(env, args[1], "uidMap")) &&
            (w->gid_map = get_string(env, args[2], "gidMap"));
  for (int i = 0; i < 3 && ok; i++) w->ns_pins[i] = get_optional_string(env, args[3 + i], ns_pin_names[i], &ok);
  if (ok) w->hostname = get_optional_string(env, args[6], "hostname", &ok);
  if (!ok) {
    free(w->pin);
    free(w->uid_map);
    free(w->gid_map);
    for (int i = 0; i < 3; i++) free(w->ns_pins[i]);
    free(w);
    return NULL;
  }
  return queue_work(env, "berth_sys.pinUserns", userns_execute, userns_complete, w, &w->work, &w->deferred);
}

/* pinNamespaces(netPin|null, ipcPin|null, utsPin|null, hostname|null): pinUserns without a
 * user namespace: new net, ipc and uts namespaces of berthd's own, each bind-mounted on its
 * file, the hostname set in the new UTS namespace. One clone (CLONE_VM) on the pool, where
 * `unshare` cost two execs (unshare, then hostname) and a fork. */
static napi_value js_pin_namespaces(napi_env env, napi_callback_info info) {
  napi_value args[5];
  if (!get_args(env, info, 5, args, "berth_sys.pinNamespaces(netPin, ipcPin, utsPin, hostname, loopbackUp)")) return NULL;
  struct userns_work *w = calloc(1, sizeof *w);
  if (!w) return throw_errno(env, ENOMEM, "pinNamespaces", NULL);
  bool ok = true;
  for (int i = 0; i < 3 && ok; i++) w->ns_pins[i] = get_optional_string(env, args[i], ns_pin_names[i], &ok);
  if (ok) w->hostname = get_optional_string(env, args[3], "hostname", &ok);
  if (ok && napi_get_value_bool(env, args[4], &w->loopback_up) != napi_ok) {
    napi_throw_type_error(env, NULL, "berth_sys.pinNamespaces: loopbackUp must be a boolean");
    ok = false;
  }
  if (ok && w->loopback_up && !w->ns_pins[0]) {
    /* Without a new network namespace, this would be the node's lo. */
    napi_throw_type_error(env, NULL, "berth_sys.pinNamespaces: loopbackUp needs a new network namespace");
    ok = false;
  }
  if (ok && !w->ns_pins[0] && !w->ns_pins[1] && !w->ns_pins[2]) {
    napi_throw_type_error(env, NULL, "berth_sys.pinNamespaces: no namespace to pin");
    ok = false;
  }
  if (ok && w->hostname && !w->ns_pins[2]) {
    /* Without a new UTS namespace, the hostname would be the node's. */
    napi_throw_type_error(env, NULL, "berth_sys.pinNamespaces: a hostname needs a new UTS namespace");
    ok = false;
  }
  if (!ok) {
    for (int i = 0; i < 3; i++) free(w->ns_pins[i]);
    free(w->hostname);
    free(w);
    return NULL;
  }
  return queue_work(env, "berth_sys.pinNamespaces", userns_execute, userns_complete, w, &w->work, &w->deferred);
}

static napi_value js_clone_mount(napi_env env, napi_callback_info info) {
  napi_value args[5];
  if (!get_args(env, info, 5, args, "berth_sys.cloneMount(source, target, recursive, readonly, usernsPath)")) return NULL;
  struct userns_work *w = calloc(1, sizeof *w);
  if (!w) return throw_errno(env, ENOMEM, "cloneMount", NULL);
  w->clone_mount = true;
  napi_valuetype t;
  napi_typeof(env, args[4], &t);
  if (!(w->source = get_string(env, args[0], "source")) || !(w->target = get_string(env, args[1], "target")) ||
      napi_get_value_bool(env, args[2], &w->recursive) != napi_ok || napi_get_value_bool(env, args[3], &w->readonly) != napi_ok ||
      (t != napi_null && t != napi_undefined && !(w->userns_path = get_string(env, args[4], "usernsPath")))) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (!pending) napi_throw_type_error(env, NULL, "berth_sys.cloneMount: recursive and readonly must be booleans");
    free(w->source);
    free(w->target);
    free(w);
    return NULL;
  }
  return queue_work(env, "berth_sys.cloneMount", userns_execute, userns_complete, w, &w->work, &w->deferred);
}

/* ---- openPty() -> [master, slave] ---- */

static napi_value js_open_pty(napi_env env, napi_callback_info info) {
  (void)info;
  int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (m < 0) return throw_errno(env, errno, "posix_openpt", NULL);
  char name[128];
  if (grantpt(m) != 0 || unlockpt(m) != 0 || ptsname_r(m, name, sizeof name) != 0) {
    int err = errno;
    close(m);
    return throw_errno(env, err, "unlockpt", NULL);
  }
  int sl = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (sl < 0) {
    int err = errno;
    close(m);
    return throw_errno(env, err, "open", name);
  }
  napi_value arr, a, b;
  NAPI_OK(napi_create_array_with_length(env, 2, &arr));
  napi_create_int32(env, m, &a);
  napi_create_int32(env, sl, &b);
  napi_set_element(env, arr, 0, a);
  napi_set_element(env, arr, 1, b);
  return arr;
}

/* ---- setWinsize(fd, rows, cols) ---- */

static napi_value js_set_winsize(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value args[3];
  int32_t fd, rows, cols;
  NAPI_OK(napi_get_cb_info(env, info, &argc, args, NULL, NULL));
  if (argc < 3 || napi_get_value_int32(env, args[0], &fd) != napi_ok || napi_get_value_int32(env, args[1], &rows) != napi_ok ||
      napi_get_value_int32(env, args[2], &cols) != napi_ok || rows < 0 || rows > 65535 || cols < 0 || cols > 65535) {
    napi_throw_type_error(env, NULL, "berth_sys.setWinsize(fd, rows, cols) with sizes from 0 to 65535");
    return NULL;
  }
  struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
  if (ioctl(fd, TIOCSWINSZ, &ws) != 0) return throw_errno(env, errno, "ioctl", "TIOCSWINSZ");
  return NULL;
}

/* ---- mallocTrim() -> boolean: malloc_trim(0), true when memory went back to the kernel ---- */

static napi_value js_malloc_trim(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value out;
  NAPI_OK(napi_get_boolean(env, malloc_trim(0) == 1, &out));
  return out;
}

/* ---- limitArenas(n) -> boolean: mallopt(M_ARENA_MAX, n), for arenas made from now on ---- */

static napi_value js_limit_arenas(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value args[1];
  NAPI_OK(napi_get_cb_info(env, info, &argc, args, NULL, NULL));
  int32_t n = 0;
  if (argc < 1 || napi_get_value_int32(env, args[0], &n) != napi_ok || n < 1) {
    napi_throw_type_error(env, NULL, "limitArenas(n): n must be a positive integer");
    return NULL;
  }
  napi_value out;
  NAPI_OK(napi_get_boolean(env, mallopt(M_ARENA_MAX, n) == 1, &out));
  return out;
}

/* ---- startWriteback(fd, offset, length) -> errno: sync_file_range(SYNC_FILE_RANGE_WRITE) ---- */

static napi_value js_start_writeback(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value args[3];
  NAPI_OK(napi_get_cb_info(env, info, &argc, args, NULL, NULL));
  int32_t fd = -1;
  int64_t offset = -1, length = -1;
  if (argc < 3 || napi_get_value_int32(env, args[0], &fd) != napi_ok || napi_get_value_int64(env, args[1], &offset) != napi_ok ||
      napi_get_value_int64(env, args[2], &length) != napi_ok || fd < 0 || offset < 0 || length < 0) {
    napi_throw_type_error(env, NULL, "startWriteback(fd, offset, length): a descriptor and a non-negative range");
    return NULL;
  }
  int err = sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE) == 0 ? 0 : errno;
  napi_value out;
  NAPI_OK(napi_create_int32(env, err, &out));
  return out;
}

/* ---- socketInNetns(nsPath, family 4|6) -> fd: an unconnected TCP socket made in a netns ---- */

struct netns_socket {
  const char *ns_path;
  int family;
  int fd;
  int err;
  const char *syscall;
};

static void *netns_socket_thread(void *arg) {
  struct netns_socket *w = arg;
  int ns = open(w->ns_path, O_RDONLY | O_CLOEXEC);
  if (ns < 0) {
    w->err = errno;
    w->syscall = "open";
    return NULL;
  }
  if (setns(ns, CLONE_NEWNET) != 0) {
    w->err = errno;
    w->syscall = "setns";
    close(ns);
    return NULL;
  }
  close(ns);
  w->fd = socket(w->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (w->fd < 0) {
    w->err = errno;
    w->syscall = "socket";
  }
  return NULL;
}

static napi_value js_socket_in_netns(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value args[2];
  NAPI_OK(napi_get_cb_info(env, info, &argc, args, NULL, NULL));
  int family = 0;
  char *path = argc >= 2 ? get_string(env, args[0], "nsPath") : NULL;
  if (!path || napi_get_value_int32(env, args[1], &family) != napi_ok || (family != 4 && family != 6)) {
    free(path);
    napi_throw_type_error(env, NULL, "berth_sys.socketInNetns(nsPath, family 4 or 6)");
    return NULL;
  }
  /* A thread of its own, joined at once: setns changes only it, and it does no I/O that
   * can wait (open, setns, socket), so the caller is held for microseconds. */
  struct netns_socket w = {.ns_path = path, .family = family == 4 ? AF_INET : AF_INET6, .fd = -1};
  pthread_t th;
  pthread_attr_t ta;
  pthread_attr_init(&ta);
  pthread_attr_setstacksize(&ta, 64 * 1024);
  int rc = pthread_create(&th, &ta, netns_socket_thread, &w);
  pthread_attr_destroy(&ta);
  if (rc != 0) {
    free(path);
    return throw_errno(env, rc, "pthread_create", NULL);
  }
  pthread_join(th, NULL);
  if (w.fd < 0) {
    return throw_errno_free(env, w.err ? w.err : EIO, w.syscall ? w.syscall : "socket", path);
  }
  free(path);
  napi_value v;
  napi_create_int32(env, w.fd, &v);
  return v;
}

/* ---- attachConmon(dir) -> fd: a bridge to <dir>/attach (SOCK_SEQPACKET) ---- */

#define ATTACH_PACKET 8192

static int write_all(int fd, const char *buf, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, buf, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return -1;
    buf += w;
    n -= (size_t)w;
  }
  return 0;
}

struct bridge {
  int seq;
  int js;
};

static void *bridge_thread(void *arg) {
  struct bridge *b = arg;
  char in[ATTACH_PACKET + 1];
  char out[ATTACH_PACKET + 3];
  bool js_input_open = true;
  for (;;) {
    struct pollfd p[2] = {{.fd = b->seq, .events = POLLIN}, {.fd = b->js, .events = js_input_open ? POLLIN : 0}};
    int r = poll(p, 2, -1);
    if (r < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (p[0].revents & POLLIN) {
      ssize_t n = recv(b->seq, in, sizeof in, 0);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break; /* conmon closed the attach connection */
      if (n < 1) continue;
      out[0] = in[0];
      out[1] = (char)(((n - 1) >> 8) & 0xff);
      out[2] = (char)((n - 1) & 0xff);
      memcpy(out + 3, in + 1, (size_t)n - 1);
      if (write_all(b->js, out, (size_t)n + 2) != 0) break;
      continue;
    }
    if (p[0].revents & (POLLHUP | POLLERR)) break;
    if (js_input_open && (p[1].revents & POLLIN)) {
      ssize_t n = read(b->js, in, ATTACH_PACKET);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) break;
      if (n == 0) {
        /* JavaScript ended its input: the container's stdin sees end of file. */
        js_input_open = false;
        shutdown(b->seq, SHUT_WR);
        continue;
      }
      ssize_t sent;
      do sent = send(b->seq, in, (size_t)n, MSG_NOSIGNAL);
      while (sent < 0 && errno == EINTR);
      if (sent < 0) break;
      continue;
    }
    if (p[1].revents & (POLLHUP | POLLERR | POLLNVAL)) break; /* JavaScript closed its end */
  }
  close(b->seq);
  close(b->js);
  free(b);
  return NULL;
}

static napi_value js_attach_conmon(napi_env env, napi_callback_info info) {
  napi_value args[1];
  if (!get_args(env, info, 1, args, "berth_sys.attachConmon(dir)")) return NULL;
  char *dir = get_string(env, args[0], "dir");
  if (!dir) return NULL;
  /* Through /proc/self/fd, a long directory still fits in sun_path's 108 bytes. */
  int dfd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) {
    return throw_errno_free(env, errno, "open", dir);
  }
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  snprintf(addr.sun_path, sizeof addr.sun_path, "/proc/self/fd/%d/attach", dfd);
  int seq = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (seq < 0 || connect(seq, (struct sockaddr *)&addr, sizeof addr) != 0) {
    int err = errno;
    if (seq >= 0) close(seq);
    close(dfd);
    return throw_errno_free(env, err, "connect", dir);
  }
  close(dfd);
  free(dir);
  int pair[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
    int err = errno;
    close(seq);
    return throw_errno(env, err, "socketpair", NULL);
  }
  struct bridge *b = malloc(sizeof *b);
  if (!b) {
    close(seq);
    close(pair[0]);
    close(pair[1]);
    return throw_errno(env, ENOMEM, "attach", NULL);
  }
  b->seq = seq;
  b->js = pair[1];
  pthread_t th;
  pthread_attr_t ta;
  pthread_attr_init(&ta);
  pthread_attr_setdetachstate(&ta, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&ta, 128 * 1024);
  if (pthread_create(&th, &ta, bridge_thread, b) != 0) {
    pthread_attr_destroy(&ta);
    close(seq);
    close(pair[0]);
    close(pair[1]);
    free(b);
    return throw_errno(env, EAGAIN, "pthread_create", NULL);
  }
  pthread_attr_destroy(&ta);
  napi_value v;
  napi_create_int32(env, pair[0], &v);
  return v;
}

/* ---- sd_notify: notifySocket(path, text), datagramBind(path) -> fd ---- */

/* Fills `addr` for a unix path, or an abstract name when `path` starts with '@'; returns the address length, or 0 when too long. */
static socklen_t unix_address(const char *path, struct sockaddr_un *addr) {
  size_t n = strlen(path);
  memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  if (n == 0 || n >= sizeof addr->sun_path) return 0;
  memcpy(addr->sun_path, path, n);
  if (path[0] == '@') {
    addr->sun_path[0] = '\0';
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
  }
  return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
}

static napi_value js_notify_socket(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  if (!get_args(env, info, 2, argv, "berth_sys: notifySocket(path, text)")) return NULL;
  char *path = get_string(env, argv[0], "path");
  if (!path) return NULL;
  char *text = get_string(env, argv[1], "text");
  if (!text) {
    free(path);
    return NULL;
  }
  struct sockaddr_un addr;
  socklen_t len = unix_address(path, &addr);
  if (len == 0) {
    free(text);
    return throw_errno_free(env, ENAMETOOLONG, "sendto", path);
  }
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  int err = 0;
  if (fd < 0) {
    err = errno;
  } else {
    /* MSG_DONTWAIT: a receiver that does not read must not stall the event loop. */
    ssize_t sent = sendto(fd, text, strlen(text), MSG_NOSIGNAL | MSG_DONTWAIT, (struct sockaddr *)&addr, len);
    if (sent < 0) err = errno;
    close(fd);
  }
  free(text);
  if (err != 0) {
    return throw_errno_free(env, err, fd < 0 ? "socket" : "sendto", path);
  }
  free(path);
  return NULL;
}

static napi_value js_datagram_bind(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  if (!get_args(env, info, 1, argv, "berth_sys: datagramBind(path)")) return NULL;
  char *path = get_string(env, argv[0], "path");
  if (!path) return NULL;
  struct sockaddr_un addr;
  socklen_t len = unix_address(path, &addr);
  int fd = len == 0 ? -1 : socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  int err = len == 0 ? ENAMETOOLONG : 0;
  if (fd < 0 && err == 0) err = errno;
  if (fd >= 0 && bind(fd, (struct sockaddr *)&addr, len) != 0) {
    err = errno;
    close(fd);
  }
  if (err != 0) {
    return throw_errno_free(env, err, "bind", path);
  }
  free(path);
  napi_value v;
  napi_create_int32(env, fd, &v);
  return v;
}

/* ---- sealedCopy(path) -> fd: the file copied into a memfd sealed against writes, growth, shrinking and new seals ---- */

static napi_value js_sealed_copy(napi_env env, napi_callback_info info) {
  napi_value args[1];
  if (!get_args(env, info, 1, args, "berth_sys.sealedCopy(path)")) return NULL;
  char *path = get_string(env, args[0], "path");
  if (!path) return NULL;
  napi_value ret = NULL;
  int mfd = -1, src = open(path, O_RDONLY | O_CLOEXEC);
  if (src < 0) {
    throw_errno(env, errno, "open", path);
    goto out;
  }
  struct stat st;
  if (fstat(src, &st) != 0) {
    throw_errno(env, errno, "fstat", path);
    goto out;
  }
  mfd = memfd_create("berth-runtime", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (mfd < 0) {
    throw_errno(env, errno, "memfd_create", path);
    goto out;
  }
  off_t done = 0;
  while (done < st.st_size) {
    ssize_t n = sendfile(mfd, src, &done, (size_t)(st.st_size - done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      throw_errno(env, n < 0 ? errno : EIO, "sendfile", path);
      goto out;
    }
  }
  if (fcntl(mfd, F_ADD_SEALS, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE) != 0) {
    throw_errno(env, errno, "fcntl", "F_ADD_SEALS");
    goto out;
  }
  napi_create_int32(env, mfd, &ret);
  mfd = -1;
out:
  if (mfd >= 0) close(mfd);
  if (src >= 0) close(src);
  free(path);
  return ret;
}

/* ---- watchExit(pid, onExit) -> handle | errno; unwatchExit(handle) ---- */

/* One watched process. Owned by two: the JavaScript handle (an external) and the loop's
 * poll handle while it is open; freed when both let go. */
struct exit_watch {
  uv_poll_t poll;
  int fd;
  napi_env env;
  napi_ref callback;
  napi_async_context async;
  napi_async_cleanup_hook_handle cleanup;
  bool closing;
  bool env_gone;
  int refs;
};

static void exit_watch_unref(struct exit_watch *w) {
  if (--w->refs == 0) free(w);
}

static void exit_watch_closed(uv_handle_t *h) {
  struct exit_watch *w = h->data;
  close(w->fd);
  w->fd = -1;
  /* Node waits for this before it tears the environment down. */
  if (w->env_gone) napi_remove_async_cleanup_hook(w->cleanup);
  exit_watch_unref(w);
}

/* Stops watching and closes the descriptor (on the main thread, while the environment lives). */
static void exit_watch_close(struct exit_watch *w) {
  if (w->closing) return;
  w->closing = true;
  uv_poll_stop(&w->poll);
  napi_remove_async_cleanup_hook(w->cleanup);
  napi_delete_reference(w->env, w->callback);
  w->callback = NULL;
  napi_async_destroy(w->env, w->async);
  uv_close((uv_handle_t *)&w->poll, exit_watch_closed);
}

static void exit_watch_env_gone(napi_async_cleanup_hook_handle handle, void *arg) {
  struct exit_watch *w = arg;
  w->cleanup = handle;
  w->env_gone = true;
  w->closing = true;
  uv_poll_stop(&w->poll);
  uv_close((uv_handle_t *)&w->poll, exit_watch_closed);
}

/* The process exited: the callback runs (in a callback scope, so that its microtasks run
 * now), then the descriptor goes. */
static void exit_watch_readable(uv_poll_t *h, int status, int events) {
  (void)status;
  (void)events;
  struct exit_watch *w = h->data;
  if (w->closing) return;
  uv_poll_stop(h);
  napi_env env = w->env;
  /* The callback may unwatch (or drop) the handle: this keeps `w` until the end. */
  w->refs++;
  napi_handle_scope hs;
  if (napi_open_handle_scope(env, &hs) == napi_ok) {
    napi_value cb, resource, result;
    if (napi_get_reference_value(env, w->callback, &cb) == napi_ok && cb != NULL && napi_create_object(env, &resource) == napi_ok &&
        napi_make_callback(env, w->async, resource, cb, 0, NULL, &result) != napi_ok) {
      /* What the callback threw is an uncaught exception, as from any event. */
      napi_value err;
      bool pending = false;
      if (napi_is_exception_pending(env, &pending) == napi_ok && pending && napi_get_and_clear_last_exception(env, &err) == napi_ok)
        napi_fatal_exception(env, err);
    }
    napi_close_handle_scope(env, hs);
  }
  exit_watch_close(w);
  exit_watch_unref(w);
}

static void exit_watch_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  struct exit_watch *w = data;
  if (!w->env_gone) exit_watch_close(w);
  exit_watch_unref(w);
}

static napi_value js_watch_exit(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value args[2], out;
  NAPI_OK(napi_get_cb_info(env, info, &argc, args, NULL, NULL));
  int32_t pid = 0;
  napi_valuetype cbtype = napi_undefined;
  if (argc < 2 || napi_get_value_int32(env, args[0], &pid) != napi_ok || pid <= 0 || napi_typeof(env, args[1], &cbtype) != napi_ok ||
      cbtype != napi_function) {
    napi_throw_type_error(env, NULL, "watchExit(pid > 0, onExit)");
    return NULL;
  }
  uv_loop_t *loop;
  NAPI_OK(napi_get_uv_event_loop(env, &loop));
  int fd = (int)syscall(SYS_pidfd_open, (pid_t)pid, 0);
  if (fd < 0) {
    NAPI_OK(napi_create_int32(env, errno, &out));
    return out;
  }
  /* A pidfd is made close-on-exec; spawn's children get only the descriptors asked for anyway. */
  struct exit_watch *w = calloc(1, sizeof *w);
  if (!w) {
    close(fd);
    NAPI_OK(napi_create_int32(env, ENOMEM, &out));
    return out;
  }
  w->fd = fd;
  w->env = env;
  w->poll.data = w;
  napi_value name;
  if (napi_create_string_utf8(env, "berth_sys.watchExit", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_async_init(env, NULL, name, &w->async) != napi_ok) {
    close(fd);
    free(w);
    napi_throw_error(env, NULL, "berth_sys: watchExit: napi_async_init failed");
    return NULL;
  }
  if (napi_create_reference(env, args[1], 1, &w->callback) != napi_ok) {
    napi_async_destroy(env, w->async);
    close(fd);
    free(w);
    napi_throw_error(env, NULL, "berth_sys: watchExit: napi_create_reference failed");
    return NULL;
  }
  int err = uv_poll_init(loop, &w->poll, fd);
  if (err != 0) {
    napi_delete_reference(env, w->callback);
    napi_async_destroy(env, w->async);
    close(fd);
    free(w);
    return throw_errno(env, -err, "uv_poll_init", "pidfd");
  }
  /* From here the poll handle holds one reference, the external the other. */
  w->refs = 2;
  if ((err = uv_poll_start(&w->poll, UV_READABLE, exit_watch_readable)) != 0 ||
      napi_add_async_cleanup_hook(env, exit_watch_env_gone, w, &w->cleanup) != napi_ok) {
    w->closing = true;
    uv_poll_stop(&w->poll);
    napi_delete_reference(env, w->callback);
    napi_async_destroy(env, w->async);
    w->refs = 1;
    uv_close((uv_handle_t *)&w->poll, exit_watch_closed);
    return throw_errno(env, err != 0 ? -err : ENOMEM, "uv_poll_start", "pidfd");
  }
  if (napi_create_external(env, w, exit_watch_finalize, NULL, &out) != napi_ok) {
    exit_watch_close(w);
    exit_watch_unref(w);
    napi_throw_error(env, NULL, "berth_sys: watchExit: napi_create_external failed");
    return NULL;
  }
  return out;
}

static napi_value js_unwatch_exit(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value arg;
  NAPI_OK(napi_get_cb_info(env, info, &argc, &arg, NULL, NULL));
  void *data = NULL;
  napi_valuetype t = napi_undefined;
  if (argc < 1 || napi_typeof(env, arg, &t) != napi_ok || t != napi_external || napi_get_value_external(env, arg, &data) != napi_ok || !data) {
    napi_throw_type_error(env, NULL, "unwatchExit(handle from watchExit)");
    return NULL;
  }
  exit_watch_close(data);
  return NULL;
}

/* ---- warmCgroupJoin(fd, ms) -> errno: writes "0" to fd (a cgroup.procs) every 4 ms for ms ---- */

#define WARM_INTERVAL_NS (4 * 1000 * 1000)

static pthread_mutex_t warm_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t warm_cond = PTHREAD_COND_INITIALIZER;
/* The descriptor written to (a dup of the caller's), the deadline (CLOCK_MONOTONIC ns; 0:
 * none), whether the thread runs, and the errno of the last refused write (0: none). */
static int warm_fd = -1;
static int64_t warm_until;
/* berthd's cgroups file (/proc/self/cgroup) and its text as the caller read it when it chose
 * the descriptor: a write is made only while the file still says that, so a move of berthd
 * by someone else (systemd, kubelet's --runtime-cgroups, an admin) during a held create is
 * never undone, even one made before the call. */
#define WARM_CG_MAX 8192
static char warm_cg[WARM_CG_MAX];
static ssize_t warm_cg_len = -1;
static char warm_cg_path[PATH_MAX];
static bool warm_running;
static int warm_errno;

static int64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Reads the file at `path` (berthd's cgroups) into buf (at most WARM_CG_MAX bytes); its length, or -1. */
static ssize_t read_own_cgroups(const char *path, char *buf) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t len = 0;
  for (;;) {
    ssize_t n = read(fd, buf + len, (size_t)(WARM_CG_MAX - len));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      len = -1;
      break;
    }
    if (n == 0) break;
    len += n;
    if (len == WARM_CG_MAX) {
      len = -1;
      break;
    }
  }
  close(fd);
  return len;
}

static void *warm_thread(void *arg) {
  (void)arg;
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, NULL);
  pthread_mutex_lock(&warm_lock);
  for (;;) {
    while (warm_fd < 0 || mono_ns() >= warm_until) pthread_cond_wait(&warm_cond, &warm_lock);
    /* Written on a copy, outside the lock: the first write may wait a grace period, and
     * the caller (the event loop) must never wait for it. */
    int fd = fcntl(warm_fd, F_DUPFD_CLOEXEC, 3);
    ssize_t want_len = warm_cg_len;
    static char want[WARM_CG_MAX], now[WARM_CG_MAX], path[PATH_MAX];
    if (want_len > 0) memcpy(want, warm_cg, (size_t)want_len);
    memcpy(path, warm_cg_path, sizeof path);
    pthread_mutex_unlock(&warm_lock);
    int err = 0;
    ssize_t now_len = read_own_cgroups(path, now);
    if (fd >= 0 && (want_len <= 0 || now_len != want_len || memcmp(now, want, (size_t)now_len) != 0)) {
      /* Moved (or unknown): no write; this warming ends, and the next call says where berthd is. */
      close(fd);
      pthread_mutex_lock(&warm_lock);
      warm_until = 0;
      continue;
    }
    if (fd < 0) err = errno;
    else {
      if (write(fd, "0", 1) != 1) err = errno ? errno : EIO;
      close(fd);
    }
    pthread_mutex_lock(&warm_lock);
    if (err != 0) {
      warm_errno = err;
      warm_until = 0;
      continue;
    }
    struct timespec ts = {.tv_sec = 0, .tv_nsec = WARM_INTERVAL_NS};
    pthread_mutex_unlock(&warm_lock);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
    pthread_mutex_lock(&warm_lock);
  }
  return NULL;
}

static napi_value js_warm_cgroup_join(napi_env env, napi_callback_info info) {
  napi_value args[4];
  if (!get_args(env, info, 4, args, "berth_sys.warmCgroupJoin(fd, ms, cgroupsPath, cgroupsText)")) return NULL;
  int64_t fd, ms;
  if (!get_int_in(env, args[0], "fd", 0, 1 << 30, &fd)) return NULL;
  if (!get_int_in(env, args[1], "ms", 0, 3600 * 1000, &ms)) return NULL;
  char *cg_path = get_string(env, args[2], "cgroupsPath");
  if (!cg_path) return NULL;
  char *cg = get_string(env, args[3], "cgroupsText");
  if (!cg) {
    free(cg_path);
    return NULL;
  }
  size_t cg_len = strlen(cg);
  if (ms > 0 && (cg_len == 0 || cg_len >= WARM_CG_MAX || strlen(cg_path) == 0 || strlen(cg_path) >= PATH_MAX)) {
    free(cg_path);
    free(cg);
    napi_throw_range_error(env, NULL, "berth_sys.warmCgroupJoin: the cgroups path and text must be given, and short");
    return NULL;
  }
  int copy = -1;
  if (ms > 0) {
    copy = fcntl((int)fd, F_DUPFD_CLOEXEC, 3);
    if (copy < 0) {
      free(cg_path);
      free(cg);
      return throw_errno(env, errno, "fcntl", "F_DUPFD_CLOEXEC");
    }
  }
  pthread_mutex_lock(&warm_lock);
  int last = warm_errno;
  warm_errno = 0;
  int old = warm_fd;
  warm_fd = copy;
  warm_cg_len = ms > 0 ? (ssize_t)cg_len : -1;
  if (ms > 0) {
    memcpy(warm_cg, cg, cg_len);
    snprintf(warm_cg_path, sizeof warm_cg_path, "%s", cg_path);
  }
  warm_until = ms > 0 ? mono_ns() + ms * 1000000 : 0;
  int perr = 0;
  if (ms > 0 && !warm_running) {
    perr = start_detached(warm_thread, NULL);
    if (perr == 0) warm_running = true;
  }
  pthread_cond_signal(&warm_cond);
  pthread_mutex_unlock(&warm_lock);
  free(cg_path);
  free(cg);
  if (old >= 0) close(old);
  if (perr != 0) return throw_errno(env, perr, "pthread_create", NULL);
  napi_value out;
  NAPI_OK(napi_create_int32(env, last, &out));
  return out;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"pipe", NULL, js_pipe, NULL, NULL, NULL, napi_enumerable, NULL},
      {"spawn", NULL, js_spawn, NULL, NULL, NULL, napi_enumerable, NULL},
      {"spawnAsync", NULL, js_spawn_async, NULL, NULL, NULL, napi_enumerable, NULL},
      {"pinNamespaces", NULL, js_pin_namespaces, NULL, NULL, NULL, napi_enumerable, NULL},
      {"mount", NULL, js_mount, NULL, NULL, NULL, napi_enumerable, NULL},
      {"umount", NULL, js_umount, NULL, NULL, NULL, napi_enumerable, NULL},
      {"removeTree", NULL, js_remove_tree, NULL, NULL, NULL, napi_enumerable, NULL},
      {"pinUserns", NULL, js_pin_userns, NULL, NULL, NULL, napi_enumerable, NULL},
      {"cloneMount", NULL, js_clone_mount, NULL, NULL, NULL, napi_enumerable, NULL},
      {"setWinsize", NULL, js_set_winsize, NULL, NULL, NULL, napi_enumerable, NULL},
      {"openPty", NULL, js_open_pty, NULL, NULL, NULL, napi_enumerable, NULL},
      {"socketInNetns", NULL, js_socket_in_netns, NULL, NULL, NULL, napi_enumerable, NULL},
      {"attachConmon", NULL, js_attach_conmon, NULL, NULL, NULL, napi_enumerable, NULL},
      {"notifySocket", NULL, js_notify_socket, NULL, NULL, NULL, napi_enumerable, NULL},
      {"datagramBind", NULL, js_datagram_bind, NULL, NULL, NULL, napi_enumerable, NULL},
      {"mallocTrim", NULL, js_malloc_trim, NULL, NULL, NULL, napi_enumerable, NULL},
      {"limitArenas", NULL, js_limit_arenas, NULL, NULL, NULL, napi_enumerable, NULL},
      {"startWriteback", NULL, js_start_writeback, NULL, NULL, NULL, napi_enumerable, NULL},
      {"sealedCopy", NULL, js_sealed_copy, NULL, NULL, NULL, napi_enumerable, NULL},
      {"watchExit", NULL, js_watch_exit, NULL, NULL, NULL, napi_enumerable, NULL},
      {"unwatchExit", NULL, js_unwatch_exit, NULL, NULL, NULL, napi_enumerable, NULL},
      {"warmCgroupJoin", NULL, js_warm_cgroup_join, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  NAPI_OK(napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
