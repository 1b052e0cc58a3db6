/*
 * berth_sys: the few syscalls berthd needs on its hot path that Node does not offer.
 *
 * - spawn: posix_spawn (glibc runs it with CLONE_VM|CLONE_VFORK), so starting conmon or
 *   `runc start` costs the same whatever berthd's size. Node's child_process forks, which
 *   copies the page tables of the whole heap and, measured on this kind of machine, costs
 *   2 ms per spawn at berthd's ~100 MB RSS (1.5 ms at 47 MB, 4.8 ms at 170 MB).
 *   The child gets exactly the descriptors asked for (everything else is closed), default
 *   signal dispositions and an empty signal mask (Node ignores SIGPIPE; that must not be
 *   inherited), and optionally a new session.
 *   Exits are reaped on the main thread: a helper thread only waits with WNOWAIT and
 *   then wakes the loop, which reaps. So a pid that JavaScript may still signal is never
 *   reaped (and reusable) behind its back.
 * - mount / umount: mount(2) and umount2(2) on libuv's thread pool, instead of forking
 *   /usr/bin/mount (~3 ms) for each container's overlay rootfs.
 * - pipe: pipe2(O_CLOEXEC), whose ends JavaScript wraps in net.Socket.
 *
 * Errors are thrown (or rejected) as Error objects with `code` (e.g. "ENOENT"), `errno`
 * and `syscall`, like Node's own.
 */
#define _GNU_SOURCE
#define NAPI_VERSION 8
#include <node_api.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

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
  napi_threadsafe_function tsfn;
};

/* On the main thread, once the child has exited: reap it and settle the promise. */
static void child_exited(napi_env env, napi_value js_cb, void *context, void *data) {
  (void)js_cb;
  (void)data;
  struct child *c = context;
  if (env != NULL) {
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

static napi_value js_spawn(napi_env env, napi_callback_info info) {
  size_t argc = 6;
  napi_value args[6];
  NAPI_OK(napi_get_cb_info(env, info, &argc, args, NULL, NULL));
  if (argc < 6) {
    napi_throw_type_error(env, NULL, "berth_sys.spawn(file, argv, envp, cwd, fds, setsid)");
    return NULL;
  }
  char *file = NULL, *cwd = NULL;
  char **argv = NULL, **envp = NULL;
  int src[MAX_FDS], tmp[MAX_FDS];
  uint32_t nfds = 0;
  bool setsid_ = false, attr_made = false, actions_made = false;
  napi_value ret = NULL;
  posix_spawnattr_t attr;
  posix_spawn_file_actions_t actions;
  for (int i = 0; i < MAX_FDS; i++) tmp[i] = -1;

  if (!(file = get_string(env, args[0], "file"))) goto out;
  if (!(argv = get_strv(env, args[1], "argv"))) goto out;
  if (!(envp = get_strv(env, args[2], "envp"))) goto out;
  napi_valuetype t;
  napi_typeof(env, args[3], &t);
  if (t != napi_null && t != napi_undefined && !(cwd = get_string(env, args[3], "cwd"))) goto out;
  bool is_array = false;
  napi_is_array(env, args[4], &is_array);
  if (!is_array || napi_get_array_length(env, args[4], &nfds) != napi_ok || nfds > MAX_FDS) {
    napi_throw_type_error(env, NULL, "berth_sys.spawn: fds must be an array of at most 16 descriptors (-1: /dev/null)");
    goto out;
  }
  for (uint32_t i = 0; i < nfds; i++) {
    napi_value e;
    napi_get_element(env, args[4], i, &e);
    if (napi_get_value_int32(env, e, &src[i]) != napi_ok) {
      napi_throw_type_error(env, NULL, "berth_sys.spawn: fds must hold integers");
      goto out;
    }
  }
  napi_get_value_bool(env, args[5], &setsid_);

  /* Each source is first copied above every target number, so that no dup2 overwrites a
   * source still to be used and none is a dup2 onto itself (which would keep CLOEXEC). */
  for (uint32_t i = 0; i < nfds; i++) {
    if (src[i] < 0) continue;
    tmp[i] = fcntl(src[i], F_DUPFD_CLOEXEC, MAX_FDS);
    if (tmp[i] < 0) {
      throw_errno(env, errno, "fcntl", "F_DUPFD_CLOEXEC");
      goto out;
    }
  }
  int err = posix_spawn_file_actions_init(&actions);
  if (err) {
    throw_errno(env, err, "posix_spawn_file_actions_init", NULL);
    goto out;
  }
  actions_made = true;
  for (uint32_t i = 0; i < nfds && !err; i++) {
    if (src[i] < 0) err = posix_spawn_file_actions_addopen(&actions, (int)i, "/dev/null", O_RDWR, 0);
    else err = posix_spawn_file_actions_adddup2(&actions, tmp[i], (int)i);
  }
  if (!err) err = posix_spawn_file_actions_addclosefrom_np(&actions, (int)nfds);
  if (!err && cwd) err = posix_spawn_file_actions_addchdir_np(&actions, cwd);
  if (err) {
    throw_errno(env, err, "posix_spawn_file_actions", NULL);
    goto out;
  }
  err = posix_spawnattr_init(&attr);
  if (err) {
    throw_errno(env, err, "posix_spawnattr_init", NULL);
    goto out;
  }
  attr_made = true;
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
  if (setsid_) flags |= POSIX_SPAWN_SETSID;
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setflags(&attr, flags);

  pid_t pid;
  err = posix_spawnp(&pid, file, &actions, &attr, argv, envp);
  if (err) {
    throw_errno(env, err, "spawn", file);
    goto out;
  }

  struct child *c = calloc(1, sizeof *c);
  napi_value promise, name, result, pidv;
  if (!c) abort(); /* the child runs; without memory its exit could never be reaped */
  c->pid = pid;
  if (napi_create_promise(env, &c->deferred, &promise) != napi_ok) abort();
  napi_create_string_utf8(env, "berth_sys.wait", NAPI_AUTO_LENGTH, &name);
  if (napi_create_threadsafe_function(env, NULL, NULL, name, 0, 1, c, child_finalize, c, child_exited, &c->tsfn) != napi_ok) abort();
  pthread_t th;
  pthread_attr_t ta;
  pthread_attr_init(&ta);
  pthread_attr_setdetachstate(&ta, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&ta, 64 * 1024);
  if (pthread_create(&th, &ta, wait_thread, c) != 0) abort();
  pthread_attr_destroy(&ta);

  napi_create_object(env, &result);
  napi_create_int32(env, pid, &pidv);
  napi_set_named_property(env, result, "pid", pidv);
  napi_set_named_property(env, result, "exited", promise);
  ret = result;

out:
  for (uint32_t i = 0; i < nfds && i < MAX_FDS; i++)
    if (tmp[i] >= 0) close(tmp[i]);
  if (actions_made) posix_spawn_file_actions_destroy(&actions);
  if (attr_made) posix_spawnattr_destroy(&attr);
  free(file);
  free(cwd);
  free_strv(argv);
  free_strv(envp);
  return ret;
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

static void mount_complete(napi_env env, napi_status status, void *arg) {
  struct mount_work *w = arg;
  if (status != napi_ok) {
    napi_value e, m;
    napi_create_string_utf8(env, "berth_sys: mount work was cancelled", NAPI_AUTO_LENGTH, &m);
    napi_create_error(env, NULL, m, &e);
    napi_reject_deferred(env, w->deferred, e);
  } else if (w->err) {
    napi_reject_deferred(env, w->deferred, errno_error(env, w->err, w->unmount ? "umount2" : "mount", w->target));
  } else {
    napi_value u;
    napi_get_undefined(env, &u);
    napi_resolve_deferred(env, w->deferred, u);
  }
  napi_delete_async_work(env, w->work);
  free(w->source);
  free(w->target);
  free(w->fstype);
  free(w->data);
  free(w);
}

static napi_value queue_mount(napi_env env, struct mount_work *w) {
  napi_value promise, name;
  NAPI_OK(napi_create_promise(env, &w->deferred, &promise));
  napi_create_string_utf8(env, "berth_sys.mount", NAPI_AUTO_LENGTH, &name);
  NAPI_OK(napi_create_async_work(env, NULL, name, mount_execute, mount_complete, w, &w->work));
  NAPI_OK(napi_queue_async_work(env, w->work));
  return promise;
}

static napi_value js_mount(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value args[5];
  NAPI_OK(napi_get_cb_info(env, info, &argc, args, NULL, NULL));
  if (argc < 5) {
    napi_throw_type_error(env, NULL, "berth_sys.mount(source, target, fstype, flags, data)");
    return NULL;
  }
  struct mount_work *w = calloc(1, sizeof *w);
  if (!w) return throw_errno(env, ENOMEM, "mount", NULL);
  int64_t flags = 0;
  if (!(w->source = get_string(env, args[0], "source")) || !(w->target = get_string(env, args[1], "target")) ||
      !(w->fstype = get_string(env, args[2], "fstype")) || napi_get_value_int64(env, args[3], &flags) != napi_ok ||
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
  int32_t flags = 0;
  if (argc < 2 || !(w->target = get_string(env, args[0], "target")) || napi_get_value_int32(env, args[1], &flags) != napi_ok) {
    if (argc < 2) napi_throw_type_error(env, NULL, "berth_sys.umount(target, flags)");
    free(w->target);
    free(w);
    return NULL;
  }
  w->flags = (unsigned long)flags;
  w->unmount = true;
  return queue_mount(env, w);
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"pipe", NULL, js_pipe, NULL, NULL, NULL, napi_enumerable, NULL},
      {"spawn", NULL, js_spawn, NULL, NULL, NULL, napi_enumerable, NULL},
      {"mount", NULL, js_mount, NULL, NULL, NULL, napi_enumerable, NULL},
      {"umount", NULL, js_umount, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  NAPI_OK(napi_define_properties(env, exports, sizeof props / sizeof props[0], props));
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
