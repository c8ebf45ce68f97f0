"""Name the clusters of a clustering run.

Two providers:

-   ``"openai"``: each cluster's N most representative images (the run's
    representative ranking, then the next best by loss to the center) are
    downscaled, encoded as base64 data URLs with their real MIME type and sent
    to a vision chat model through the official ``openai`` client (any
    OpenAI-compatible server via ``base_url``). The model answers
    ``{"name": ..., "description": ...}``: with ``response_format`` json_schema
    where the endpoint accepts it, as plain JSON text otherwise (parsed
    tolerantly: code fences, extra prose).
-   ``"offline"``: no network; each cluster is named after the ImageNet classes
    that the offline default model (:func:`clustering.backbones.predict_classes`)
    predicts most often for its representatives.

Names are stored in the run's results (``results.names``, plus
``results.descriptions`` and ``results.naming``) and in a per-sample string
field ``{run_key}_name`` (recorded as the run config's ``name_field``), written
by sample id on the root dataset; the integer labels are untouched.

Retries and timeouts are the ``openai`` client's own: ``timeout`` seconds per
HTTP request, and ``max_retries`` automatic retries with exponential backoff
(0.5 s doubling up to 8 s, with jitter; a server's ``Retry-After`` /
``retry-after-ms`` of up to 2 minutes is honoured instead) on connection
errors, timeouts, 408, 409, 429 and 5xx. A cluster that still fails gets an
error message in the summary; the other clusters keep their names.

The API key comes from ``api_key`` or the ``OPENAI_API_KEY`` environment
variable (the plugin secret in the App). It is handed to the client only: it is
never stored in the dataset, the run config, the results or logs.
"""

import base64
import contextlib
import io
import json
import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from concurrent.futures import TimeoutError as FuturesTimeout
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from . import runs as cr
from . import writer
from .names import name_field_of
from .progress import progress_or_bar

logger = logging.getLogger(__name__)

PROVIDERS = ("openai", "offline")
API_KEY_ENV = "OPENAI_API_KEY"
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_NUM_IMAGES = 5
DEFAULT_MAX_SIDE = 512
DEFAULT_MAX_CONCURRENCY = 4
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_RETRIES = 3
DEFAULT_DEADLINE = 600.0
MAX_NAME_CHARS = 60
OFFLINE_TOP_K = 5

# formats the vision endpoints accept as-is -> MIME type
_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}

SYSTEM_PROMPT = (
    "You name clusters of images found by unsupervised image clustering. "
    "You are shown the most representative images of one cluster. Find what "
    "they have in common (object category, scene, texture, style, ...) and "
    "give the cluster a short, specific name of 1 to 3 words: lowercase unless "
    "it is a proper noun, no numbering, no trailing punctuation."
)
_DESCRIBE = " Also write a one-sentence description of the cluster."
_REPLY_WITH_DESCRIPTION = (
    ' Reply with only a JSON object: {"name": "<1-3 words>", '
    '"description": "<one sentence>"}.'
)
_REPLY_NAME_ONLY = ' Reply with only a JSON object: {"name": "<1-3 words>"}.'


# --------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------


def encode_image(filepath, max_side=DEFAULT_MAX_SIDE):
    """Reads an image and returns ``(mime_type, bytes, (width, height))``.

    Images no larger than ``max_side`` in a format vision endpoints accept
    (JPEG, PNG, WEBP, single-frame GIF) and without an EXIF rotation are sent
    as their original bytes; others are EXIF-rotated, downscaled so that their
    longest side is ``max_side`` and re-encoded in their own format (JPEG stays
    JPEG, ...; other formats become PNG). The MIME type always matches the
    bytes.
    """
    from PIL import Image, ImageOps

    with open(filepath, "rb") as f:
        data = f.read()
    with Image.open(io.BytesIO(data)) as img:
        fmt = img.format
        orientation = img.getexif().get(0x0112, 1)
        animated = getattr(img, "n_frames", 1) > 1
        if (
            fmt in _MIME
            and max(img.size) <= max_side
            and orientation in (None, 1)
            and not animated
        ):
            return _MIME[fmt], data, img.size

        img.load()
        img = ImageOps.exif_transpose(img)
        if max(img.size) > max_side:
            img.thumbnail((max_side, max_side), Image.LANCZOS)
        out_fmt = fmt if fmt in ("JPEG", "PNG", "WEBP") else "PNG"
        if out_fmt == "JPEG":
            if img.mode not in ("RGB", "L"):
                img = img.convert("RGB")
            save_kwargs = {"quality": 90}
        else:
            if img.mode not in ("1", "L", "LA", "P", "RGB", "RGBA"):
                img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
            save_kwargs = {}
        buf = io.BytesIO()
        img.save(buf, format=out_fmt, **save_kwargs)
        return _MIME[out_fmt], buf.getvalue(), img.size


def data_url(mime, data):
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


# --------------------------------------------------------------------------
# Replies
# --------------------------------------------------------------------------


def _clean_name(name):
    name = re.sub(r"\s+", " ", str(name)).strip().strip("\"'`*").strip()
    name = name.rstrip(".!;:,").strip()
    if len(name) > MAX_NAME_CHARS:
        name = name[:MAX_NAME_CHARS].rsplit(" ", 1)[0].strip() or name[:MAX_NAME_CHARS]
    return name


def _json_objects(text):
    """Yields the dicts that parse from ``{...}`` spans of ``text``, in order."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(obj, dict):
            yield obj


def parse_reply(text):
    """``(name, description)`` from a model reply.

    Accepts a JSON object alone, in a Markdown code fence, or amid prose; keys
    are matched case-insensitively (``name``/``label``/``title``). A reply
    without JSON that is a single short line (at most 5 words) is taken as the
    name. Raises ``ValueError`` otherwise.
    """
    if text is None:
        raise ValueError("empty reply")
    text = str(text).strip()
    fenced = re.findall(r"```(?:json|JSON)?\s*(.*?)```", text, flags=re.S)
    for candidate in [*fenced, text]:
        for obj in _json_objects(candidate):
            keys = {str(k).lower(): v for k, v in obj.items()}
            for key in ("name", "label", "title", "cluster_name"):
                if isinstance(keys.get(key), str) and _clean_name(keys[key]):
                    description = keys.get("description")
                    description = (
                        re.sub(r"\s+", " ", description).strip()
                        if isinstance(description, str) and description.strip()
                        else None
                    )
                    return _clean_name(keys[key]), description
    lines = [l for l in text.splitlines() if l.strip() and not l.strip().startswith("```")]
    if len(lines) == 1 and "{" not in lines[0]:
        line = re.sub(r"^(cluster\s+)?name\s*:\s*", "", lines[0].strip(), flags=re.I)
        if 0 < len(line.split()) <= 5:
            return _clean_name(line), None
    raise ValueError(f"no JSON name in reply: {text[:200]!r}")


def _public_url(url):
    """``url`` without credentials or query string (safe to store)."""
    if not url:
        return None
    parts = urlsplit(str(url))
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _scrub(text, secret):
    text = str(text)
    if secret:
        text = text.replace(secret, "***")
    return text


def _describe_error(e, secret=None):
    """A one-line, key-free message for a failed request."""
    try:
        import openai
    except ImportError:  # pragma: no cover
        openai = None
    if openai is not None:
        if isinstance(e, openai.APITimeoutError):
            msg = "request timed out (after the client's retries)"
        elif isinstance(e, openai.APIStatusError):
            detail = getattr(e, "message", None) or str(e)
            msg = f"HTTP {e.status_code} ({type(e).__name__}): {detail}"
        elif isinstance(e, openai.APIConnectionError):
            cause = e.__cause__ or e.__context__
            msg = f"connection error: {cause or e}"
        else:
            msg = f"{type(e).__name__}: {e}"
    else:
        msg = f"{type(e).__name__}: {e}"
    return _scrub(msg, secret)[:500]


# --------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------


def _select_images(results, clusters, num_images):
    """{cluster: [sample ids]}: the stored representative ranking first, then
    the next best members by loss to their center."""
    labels = np.asarray(results.labels)
    ids = list(results.sample_ids)
    losses = getattr(results, "sample_losses", None)
    losses = (
        np.nan_to_num(np.asarray(losses, dtype=np.float64), nan=np.inf)
        if losses is not None and len(losses) == len(ids)
        else np.zeros(len(ids))
    )
    reps = getattr(results, "representatives", None) or {}
    selected = {}
    for c in clusters:
        chosen = list(reps.get(str(c), []))[:num_images]
        if len(chosen) < num_images:
            taken = set(chosen)
            members = np.flatnonzero(labels == c)
            for i in members[np.argsort(losses[members], kind="stable")]:
                if len(chosen) >= num_images:
                    break
                if ids[i] not in taken:
                    chosen.append(ids[i])
                    taken.add(ids[i])
        selected[c] = chosen
    return selected


# --------------------------------------------------------------------------
# OpenAI provider
# --------------------------------------------------------------------------


def _response_format(describe):
    props = {"name": {"type": "string", "description": "1-3 word cluster name"}}
    if describe:
        props["description"] = {"type": "string", "description": "one sentence"}
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "cluster_name",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": props,
                "required": list(props),
                "additionalProperties": False,
            },
        },
    }


def build_messages(cluster, size, images, describe=True, max_side=DEFAULT_MAX_SIDE):
    """Chat messages for one cluster; ``images`` are ``(mime, bytes)`` pairs."""
    system = SYSTEM_PROMPT + (_DESCRIBE + _REPLY_WITH_DESCRIPTION if describe else _REPLY_NAME_ONLY)
    text = (
        f"Cluster {cluster} ({size} images). Here are its {len(images)} most "
        "representative images, best first. Name this cluster."
    )
    detail = "low" if max_side <= 512 else "auto"
    content = [{"type": "text", "text": text}]
    for mime, data in images:
        content.append(
            {"type": "image_url", "image_url": {"url": data_url(mime, data), "detail": detail}}
        )
    return [{"role": "system", "content": system}, {"role": "user", "content": content}]


class _OpenAINamer:
    """Names one cluster per call; shares one client (thread-safe)."""

    def __init__(self, api_key, model, base_url, timeout, max_retries, describe):
        try:
            import openai
        except ImportError as e:  # pragma: no cover
            raise ImportError(
                "provider='openai' needs the `openai` package (pip install openai)"
            ) from e
        self._openai = openai
        self._key = api_key
        self.client = openai.OpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries
        )
        self.model = model
        self.describe = describe
        self.structured = True  # response_format json_schema, until refused
        self.requests = 0
        self._lock = threading.Lock()

    def _create(self, client, messages, structured):
        with self._lock:
            self.requests += 1
        kwargs = {"model": self.model, "messages": messages}
        if structured:
            kwargs["response_format"] = _response_format(self.describe)
        return client.chat.completions.create(**kwargs)

    def __call__(self, messages, first=False, timeout=None):
        """``(name, description)``; ``first``: without the client's retries
        and with at most ``timeout`` seconds (the endpoint's first answer)."""
        client = self.client.with_options(max_retries=0, timeout=timeout) if first else self.client
        structured = self.structured
        try:
            response = self._create(client, messages, structured)
        except (self._openai.BadRequestError, self._openai.UnprocessableEntityError) as e:
            if not structured:
                raise
            # endpoint without json_schema support: plain JSON from the prompt
            logger.info("Endpoint refused response_format (%s); retrying without it", e.status_code)
            self.structured = False
            response = self._create(client, messages, False)
        if not response.choices:
            raise ValueError("reply has no choices")
        message = response.choices[0].message
        refusal = getattr(message, "refusal", None)
        if refusal:
            raise ValueError(f"model refused: {refusal}")
        return parse_reply(message.content)


# --------------------------------------------------------------------------
# Offline provider
# --------------------------------------------------------------------------


def _offline_names(selected, paths, progress):
    """Names from the ImageNet classes predicted for each cluster's images."""
    from .backbones import DEFAULT_MODEL as OFFLINE_MODEL, predict_classes

    order = [(c, sid) for c, sids in selected.items() for sid in sids if sid in paths]
    preds = predict_classes([paths[sid] for _, sid in order], top_k=OFFLINE_TOP_K, progress=progress)
    per_cluster = {c: [] for c in selected}
    for (c, _), p in zip(order, preds):
        if p:
            per_cluster[c].append([(x[0], float(x[1])) if isinstance(x, (tuple, list)) else (x, 1.0) for x in p])
    out = {}
    for c, image_preds in per_cluster.items():
        if not image_preds:
            out[c] = {"error": "no readable image to classify"}
            continue
        votes, score = {}, {}
        for p in image_preds:
            for rank, (name, prob) in enumerate(p):
                votes[name] = votes.get(name, 0) + 1
                score[name] = score.get(name, 0.0) + prob
            top1 = p[0][0]
            score[top1] += 1.0  # top-1 predictions weigh most
        ranked = sorted(votes, key=lambda n: (-score[n], -votes[n], n))
        n = len(image_preds)
        top = ranked[:3]
        out[c] = {
            "name": _clean_name(top[0]),
            "description": "Most frequent ImageNet classes among its representatives: "
            + ", ".join(f"{name} ({votes[name]}/{n})" for name in top),
            "classes": [[name, votes[name], round(score[name], 4)] for name in ranked[:5]],
            "images": n,
        }
    return out, OFFLINE_MODEL


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def _validate(provider, num_images, max_side, max_concurrency, timeout, max_retries, deadline):
    if provider not in PROVIDERS:
        raise ValueError(f"Unknown provider {provider!r}; use one of {PROVIDERS}")
    for name, value, low in (
        ("num_images", num_images, 1),
        ("max_side", max_side, 16),
        ("max_concurrency", max_concurrency, 1),
        ("max_retries", max_retries, 0),
    ):
        if isinstance(value, bool) or int(value) != value or value < low:
            raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
    for name, value in (("timeout", timeout), ("deadline", deadline)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a number of seconds > 0; got {value!r}")


def label_clusters(
    samples,
    run_key,
    provider="openai",
    model=None,
    base_url=None,
    num_images=DEFAULT_NUM_IMAGES,
    overwrite=False,
    max_side=DEFAULT_MAX_SIDE,
    dry_run=False,
    api_key=None,
    max_concurrency=DEFAULT_MAX_CONCURRENCY,
    timeout=DEFAULT_TIMEOUT,
    max_retries=DEFAULT_MAX_RETRIES,
    deadline=DEFAULT_DEADLINE,
    describe=True,
    progress=None,
):
    """Names the clusters of run ``run_key`` (HDBSCAN noise excluded).

    The first request is sent alone, without retries: an endpoint that
    refuses connections, does not answer within ``timeout`` or rejects the
    key or model fails the call at once (no cluster is named). The others
    then go out concurrently, with the client's retries, until ``deadline``.
    A call that names no cluster raises; one that names some stores those
    and reports the others' errors.

    Args:
        samples: the dataset (or a view of it) holding the run
        run_key: a clustering run key
        provider: ``"openai"`` (a vision chat model) or ``"offline"`` (ImageNet
            classes of the offline default model)
        model: the chat model (default ``"gpt-4o-mini"``)
        base_url: an OpenAI-compatible endpoint (default: the client's, i.e.
            ``OPENAI_BASE_URL`` or api.openai.com)
        num_images: images per cluster, most representative first
        overwrite: also rename clusters that already have a name (default:
            only name the missing ones)
        max_side: longest image side sent, in pixels (larger images are
            downscaled)
        dry_run: send and store nothing; report how many requests, images and
            bytes would be sent
        api_key: the API key (default: ``$OPENAI_API_KEY``); never stored
        max_concurrency: concurrent requests
        timeout: seconds per HTTP request (the client's ``timeout``; None =
            the default, 60 s)
        max_retries: the client's automatic retries (backoff) on connection
            errors, timeouts, 408/409/429 and 5xx (not for the first request)
        deadline: seconds for all requests; clusters not named by then get
            an error
        describe: also ask for a one-sentence description
        progress: None or True (a progress bar), False (silent), or a callable
            ``progress(fraction, message)``

    Returns:
        a summary dict: ``names``, ``descriptions`` and ``errors`` per cluster
        (str ids), ``named`` (clusters named now), ``skipped`` (kept names),
        ``requests_planned``, ``requests_sent`` (chat-completion calls made;
        the client's automatic retries are not counted), ``images``,
        ``image_bytes`` (encoded image bytes), ``payload_bytes`` (JSON request
        bodies, base64 included), ``provider``, ``model``, ``name_field``,
        ``clusters`` (table rows: cluster, size, name, description, error,
        status)
    """
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    max_retries = DEFAULT_MAX_RETRIES if max_retries is None else max_retries
    _validate(provider, num_images, max_side, max_concurrency, timeout, max_retries, deadline)
    dataset = samples._root_dataset
    config = cr.get_clustering_run_config(dataset, run_key)
    cr.require_sample_run(config, run_key, "label_clusters")
    name_field = name_field_of(dataset, run_key, config)
    with contextlib.ExitStack() as stack:
        # the run is claimed through the requests, so that no edit interleaves
        edit = None if dry_run else stack.enter_context(writer.RunEdit(dataset, run_key, "label_clusters"))
        results = edit.results if edit else writer.latest_results(dataset, run_key)
        return _label(
            dataset, run_key, results, edit, name_field, provider, model or DEFAULT_MODEL, base_url,
            int(num_images), overwrite, int(max_side), dry_run, api_key, int(max_concurrency), timeout,
            int(max_retries), deadline, describe, progress,
        )


def _label(dataset, run_key, results, edit, name_field, provider, model, base_url, num_images, overwrite,
           max_side, dry_run, api_key, max_concurrency, timeout, max_retries, deadline, describe, progress):
    old_names = dict(getattr(results, "names", None) or {})
    old_desc = dict(getattr(results, "descriptions", None) or {})
    clusters = results.cluster_ids()
    todo = [c for c in clusters if overwrite or not old_names.get(str(c))]
    skipped = [str(c) for c in clusters if c not in todo]
    labels = np.asarray(results.labels)
    sizes = np.bincount(labels[labels >= 0], minlength=(max(clusters) + 1) if clusters else 0)

    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    if provider == "openai" and not dry_run and todo and not api_key:
        raise ValueError(
            f"No API key: set the {API_KEY_ENV} environment variable (the plugin "
            f"secret {API_KEY_ENV} in the App), or pass api_key; or use "
            "provider='offline' or dry_run=True"
        )

    selected = _select_images(results, todo, num_images)
    all_ids = [sid for sids in selected.values() for sid in sids]
    paths = dict(zip(*dataset.select(all_ids).values(["id", "filepath"]))) if all_ids else {}

    summary = {
        "run_key": run_key,
        "provider": provider,
        "model": model if provider == "openai" else None,
        "base_url": _public_url(base_url) if provider == "openai" else None,
        "dry_run": bool(dry_run),
        "name_field": name_field,
        "named": [],
        "skipped": skipped,
        "requests_planned": len(todo) if provider == "openai" else 0,
        "requests_sent": 0,
        "images": 0,
        "image_bytes": 0,
        "payload_bytes": 0,
    }
    outcomes = {}  # cluster -> {"name", "description", "error", "images"}

    with progress_or_bar(progress, f"Naming clusters of '{run_key}'") as report:
        report(0.0, f"{len(todo)} clusters to name")
        if provider == "offline":
            summary["images"] = sum(1 for sid in all_ids if sid in paths)
            if todo and not dry_run:
                offline, offline_model = _offline_names(selected, paths, progress=lambda f, m="": report(0.95 * f, m))
                summary["model"] = offline_model
                outcomes.update(offline)
        else:
            outcomes = _run_openai(
                todo, selected, paths, sizes, dict(
                    api_key=api_key, model=model, base_url=base_url, timeout=timeout,
                    max_retries=max_retries, describe=describe,
                ),
                max_side, max_concurrency, deadline, dry_run, summary, report,
            )
        errors = {str(c): o["error"] for c, o in outcomes.items() if o.get("error")}
        if todo and not dry_run and not any(o.get("name") for o in outcomes.values()):
            shown = "; ".join(f"cluster {c}: {m}" for c, m in list(errors.items())[:3])
            raise RuntimeError(f"No cluster of run '{run_key}' could be named ({len(errors)} failed): {shown}")
        if not dry_run:
            _store(edit, provider, summary, outcomes)
        report(1.0, "done")

    names = dict(getattr(results, "names", None) or {}) if not dry_run else dict(old_names)
    descriptions = dict(getattr(results, "descriptions", None) or {}) if not dry_run else dict(old_desc)
    summary["names"] = names
    summary["descriptions"] = descriptions
    summary["errors"] = errors
    summary["named"] = sorted((str(c) for c, o in outcomes.items() if o.get("name")), key=int)
    summary["clusters"] = [
        {
            "cluster": c,
            "size": int(sizes[c]) if c < len(sizes) else 0,
            "name": names.get(str(c)),
            "description": descriptions.get(str(c)),
            "error": errors.get(str(c)),
            "status": (
                "error" if str(c) in errors
                else "kept" if str(c) in skipped
                else "dry run" if dry_run
                else "named"
            ),
        }
        for c in clusters
    ]
    if errors:
        logger.warning(
            "Naming failed for %d of %d clusters of run '%s': %s",
            len(errors), len(todo), run_key,
            "; ".join(f"{c}: {m}" for c, m in errors.items()),
        )
    return summary


#: errors of a first request that no retry or other cluster would fix
_FATAL_STATUS = (401, 403, 404)


def _run_openai(todo, selected, paths, sizes, client_kwargs, max_side, max_concurrency, deadline, dry_run,
                summary, report):
    secret = client_kwargs["api_key"]
    outcomes = {}
    lock = threading.Lock()

    def prepare(c):
        images, problems = [], []
        for sid in selected[c]:
            path = paths.get(sid)
            if path is None:
                problems.append(f"sample {sid} no longer exists")
                continue
            try:
                mime, data, _ = encode_image(path, max_side)
            except Exception as e:  # unreadable image: skip it
                problems.append(f"{os.path.basename(path)}: {type(e).__name__}: {e}")
                continue
            images.append((mime, data))
        if not images:
            raise ValueError("no readable image: " + "; ".join(problems))
        messages = build_messages(c, int(sizes[c]), images, client_kwargs["describe"], max_side)
        with lock:
            summary["images"] += len(images)
            summary["image_bytes"] += sum(len(d) for _, d in images)
            summary["payload_bytes"] += len(json.dumps({"model": client_kwargs["model"], "messages": messages}))
        return messages, len(images)

    if dry_run:
        for i, c in enumerate(todo):
            try:
                prepare(c)
            except Exception as e:
                outcomes[c] = {"error": _describe_error(e)}
            report((i + 1) / max(1, len(todo)), f"{i + 1}/{len(todo)} clusters prepared")
        return outcomes

    if not todo:
        return outcomes
    namer = _OpenAINamer(**client_kwargs)
    t_end = time.monotonic() + deadline

    def ask(c, messages, n, first=False):
        t0 = time.perf_counter()
        name, description = namer(messages, first=first, timeout=min(client_kwargs["timeout"], deadline))
        return {"name": name, "description": description, "images": n, "seconds": round(time.perf_counter() - t0, 3)}

    def work(c):
        return ask(c, *prepare(c))

    queue = list(todo)
    pool = ThreadPoolExecutor(max_workers=min(max_concurrency, len(todo)), thread_name_prefix="label_clusters")
    try:
        while queue:  # the first request decides whether the endpoint answers at all
            c = queue.pop(0)
            try:
                prepared = prepare(c)
            except Exception as e:  # no readable image: not the endpoint's answer
                outcomes[c] = {"error": _describe_error(e, secret)}
                continue
            try:
                outcomes[c] = ask(c, *prepared, first=True)
            except Exception as e:
                if _fatal(namer, e):
                    raise RuntimeError(
                        f"The naming endpoint {summary['base_url'] or 'api.openai.com'} failed the first "
                        f"request ({_describe_error(e, secret)}); no cluster was named"
                    ) from None
                if _retryable(namer, e):  # it answered: retried below with the client's retries
                    queue.insert(0, c)
                else:
                    outcomes[c] = {"error": _describe_error(e, secret)}
            break
        report(0.95 * len(outcomes) / len(todo), f"{len(outcomes)}/{len(todo)} clusters")
        futures = {pool.submit(work, c): c for c in queue}
        try:
            for future in as_completed(futures, timeout=max(0.0, t_end - time.monotonic())):
                c = futures[future]
                try:
                    outcomes[c] = future.result()
                except Exception as e:
                    outcomes[c] = {"error": _describe_error(e, secret)}
                report(0.95 * len(outcomes) / len(todo), f"{len(outcomes)}/{len(todo)} clusters")
        except FuturesTimeout:
            for c in queue:
                outcomes.setdefault(c, {"error": f"not named within the deadline of {deadline:g} s"})
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        summary["requests_sent"] = namer.requests
        summary["structured_output"] = namer.structured
        namer.client.close()
    return outcomes


def _retryable(namer, e):
    """Whether the client would retry this HTTP status (408, 409, 429, 5xx)."""
    code = getattr(e, "status_code", None) if isinstance(e, namer._openai.APIStatusError) else None
    return code is not None and (code in (408, 409, 429) or code >= 500)


def _fatal(namer, e):
    """Whether a first request's error means that no request would succeed."""
    openai = namer._openai
    if isinstance(e, openai.APIConnectionError):  # refused, unreachable or silent (timeouts too)
        return True
    return isinstance(e, openai.APIStatusError) and e.status_code in _FATAL_STATUS


def _store(edit, provider, summary, outcomes):
    """Merges new names into the claimed run state and stores it."""
    for c, o in outcomes.items():
        if o.get("name"):
            edit.raw_names[str(c)] = o["name"]
            if o.get("description"):
                edit.descriptions[str(c)] = o["description"]
            else:
                edit.descriptions.pop(str(c), None)
    for c, o in outcomes.items():
        entry = {
            "provider": provider,
            "model": summary["model"],
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if provider == "openai":
            entry["base_url"] = summary["base_url"]
        if o.get("error"):
            entry["error"] = o["error"]
        if o.get("classes"):
            entry["classes"] = o["classes"]
        if o.get("name") or str(c) not in edit.provenance:
            edit.provenance[str(c)] = entry
        else:  # keep how the existing name was made; note the failed attempt
            edit.provenance[str(c)] = dict(edit.provenance[str(c)], last_error=o.get("error"))
    named = sorted(str(c) for c, o in outcomes.items() if o.get("name"))
    naming = edit.naming
    # provider/model/base_url of the last call that named clusters
    # (per-cluster provenance in "clusters")
    naming.update(provider=provider, model=summary["model"], base_url=summary["base_url"])
    naming["errors"] = {str(c): o["error"] for c, o in outcomes.items() if o.get("error")}
    edit.save({"provider": provider, "model": summary["model"]}, {"named": named})
