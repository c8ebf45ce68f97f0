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
    that the offline default model (:func:`clustering.features.backbones.predict_classes`)
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
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from ..runs import records as cr
from ..runs import writer
from .names import name_field_of
from ..progress import progress_or_bar

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
DEFAULT_NEIGHBORS = 2
DEFAULT_NEIGHBOR_IMAGES = 2
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
_CONTRAST = (
    " After its images come a few images of the most similar other clusters, for "
    "contrast: give a name that tells this cluster apart from them (do not name them)."
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


def build_messages(cluster, size, images, describe=True, max_side=DEFAULT_MAX_SIDE, neighbors=(), parent=None,
                   taken=()):
    """Chat messages for one cluster; ``images`` are ``(mime, bytes)`` pairs.
    ``neighbors``: ``(cluster id, images)`` of the most similar sibling
    clusters, shown for contrast; ``parent``: the name of the cluster this
    one is a sub-cluster of; ``taken``: names its siblings already have."""
    system = SYSTEM_PROMPT + (_CONTRAST if neighbors else "")
    system += _DESCRIBE + _REPLY_WITH_DESCRIPTION if describe else _REPLY_NAME_ONLY
    detail = "low" if max_side <= 512 else "auto"

    def pictures(pairs):
        return [{"type": "image_url", "image_url": {"url": data_url(mime, data), "detail": detail}} for mime, data in pairs]

    text = f"Cluster {cluster} ({size} images). Here are its {len(images)} most representative images, best first."
    if parent:
        text += f" It is a sub-group of the cluster named '{parent}': name it within that group."
    content = [{"type": "text", "text": text}, *pictures(images)]
    for other, other_images in neighbors:
        content.append({"type": "text", "text": f"For contrast, a similar neighboring cluster ({other}), not to be named:"})
        content += pictures(other_images)
    ask = "Name this cluster."
    if taken:
        ask += " Its sibling clusters are already named " + ", ".join(f"'{t}'" for t in taken)
        ask += ": choose a different, more specific name."
    content.append({"type": "text", "text": ask})
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
    from ..features.backbones import DEFAULT_MODEL as OFFLINE_MODEL, predict_classes

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


def _distinct_classes(outcomes, groups, kept):
    """Offline names made distinct among siblings where their images allow:
    within a group of siblings the clusters take distinct ImageNet classes
    that maximize their summed score (the Hungarian algorithm over their top
    classes, the names siblings keep excluded); a cluster left without a
    scored class keeps its own top class."""
    from scipy.optimize import linear_sum_assignment

    named = {c: o for c, o in outcomes.items() if o.get("classes")}
    done = set()
    for c in named:
        if c in done:
            continue
        family = [c] + [s for s in groups.get(c, []) if s in named]
        done.update(family)
        taken = {kept[s].casefold() for s in groups.get(c, []) if s in kept}
        candidates = sorted({
            name for s in family for name, _, _ in named[s]["classes"] if _clean_name(name).casefold() not in taken
        })
        if not candidates:
            continue
        score = np.array([
            [{n: sc for n, _, sc in named[s]["classes"]}.get(name, 0.0) for name in candidates] for s in family
        ])
        for r, col in zip(*linear_sum_assignment(-score)):
            if score[r, col] > 0:
                named[family[r]]["name"] = _clean_name(candidates[col])
    return outcomes


@dataclass
class _Settings:
    """What a ``label_clusters`` call asks for (see its parameters)."""

    provider: str
    model: str
    base_url: str
    num_images: int
    overwrite: bool
    max_side: int
    dry_run: bool
    api_key: str
    max_concurrency: int
    timeout: float
    max_retries: int
    deadline: float
    describe: bool
    neighbors: int
    neighbor_images: int

    def validate(self):
        if self.provider not in PROVIDERS:
            raise ValueError(f"Unknown provider {self.provider!r}; use one of {PROVIDERS}")
        for name, low in (("num_images", 1), ("max_side", 16), ("max_concurrency", 1), ("max_retries", 0),
                          ("neighbors", 0), ("neighbor_images", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
        for name in ("timeout", "deadline"):
            value = getattr(self, name)
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
    neighbors=DEFAULT_NEIGHBORS,
    neighbor_images=DEFAULT_NEIGHBOR_IMAGES,
    progress=None,
):
    """Names the clusters of run ``run_key`` (HDBSCAN noise excluded), each
    knowing its siblings (the run's other clusters; in a cluster tree, the
    clusters with the same parent, whose name is given too).

    Each request shows the cluster's most representative images, then a few
    images of its ``neighbors`` nearest sibling clusters (by center) and asks
    for a name that tells it apart from them. Siblings that still get the
    same name are asked again, once, with the names already taken; a name
    still shared after that gets the cluster id appended. The offline
    provider gives siblings distinct ImageNet classes where their images
    allow.

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
        neighbors: sibling clusters shown for contrast in each request (0: none)
        neighbor_images: images of each of them
        progress: None or True (a progress bar), False (silent), or a callable
            ``progress(fraction, message)``

    Returns:
        a summary dict: ``names``, ``descriptions`` and ``errors`` per cluster
        (str ids), ``named`` (clusters named now), ``skipped`` (kept names),
        ``requests_planned``, ``requests_sent`` (chat-completion calls made,
        the second round for shared names included; the client's automatic
        retries are not counted), ``renamed`` (clusters asked again),
        ``images``, ``image_bytes`` (encoded image bytes, neighbors' included),
        ``payload_bytes`` (JSON request bodies, base64 included),
        ``provider``, ``model``, ``name_field``, ``clusters`` (table rows:
        cluster, size, name, description, error, status)
    """
    settings = _Settings(
        provider, model or DEFAULT_MODEL, base_url, num_images, overwrite, max_side, dry_run,
        api_key or os.environ.get(API_KEY_ENV) or None, max_concurrency,
        DEFAULT_TIMEOUT if timeout is None else timeout,
        DEFAULT_MAX_RETRIES if max_retries is None else max_retries, deadline, describe, neighbors, neighbor_images,
    )
    settings.validate()
    dataset = samples._root_dataset
    config = cr.get_clustering_run_config(dataset, run_key)
    cr.require_sample_run(config, run_key, "label_clusters")
    name_field = name_field_of(dataset, run_key, config)
    with contextlib.ExitStack() as stack:
        # the run is claimed through the requests, so that no edit interleaves
        edit = None if dry_run else stack.enter_context(writer.RunEdit(dataset, run_key, "label_clusters"))
        results = edit.results if edit else writer.latest_results(dataset, run_key)
        return _label(dataset, run_key, results, edit, name_field, settings, progress)


def _siblings(dataset, results):
    """``(groups, parent_names)``: each cluster's siblings (the clusters of
    the run with the same parent; all of them in a run without parents) and
    the name of its parent cluster (in a cluster tree) or None."""
    clusters = results.cluster_ids()
    parents = {int(c): p for c, p in (getattr(results, "parents", None) or {}).items()}
    groups = {c: [s for s in clusters if s != c and parents.get(s) == parents.get(c)] for c in clusters}
    parent_names = {}
    parent_run = getattr(results.config, "parent_run", None)
    if parent_run and parents:
        names = writer.latest_results(dataset, parent_run).names or {}
        parent_names = {c: names.get(str(p)) for c, p in parents.items()}
    return groups, parent_names


def _nearest(results, groups, clusters, count):
    """{cluster: its ``count`` siblings of nearest center}."""
    centers = np.asarray(results.centers, dtype=np.float64)
    out = {}
    for c in clusters:
        distance = {s: float(np.linalg.norm(centers[c] - centers[s])) for s in groups[c]}
        out[c] = sorted(distance, key=distance.get)[:count]
    return out


def _label(dataset, run_key, results, edit, name_field, settings, progress):
    old_names = dict(getattr(results, "names", None) or {})
    old_desc = dict(getattr(results, "descriptions", None) or {})
    clusters = results.cluster_ids()
    todo = [c for c in clusters if settings.overwrite or not old_names.get(str(c))]
    skipped = [str(c) for c in clusters if c not in todo]
    labels = np.asarray(results.labels)
    sizes = np.bincount(labels[labels >= 0], minlength=(max(clusters) + 1) if clusters else 0)
    groups, parent_names = _siblings(dataset, results)
    neighbors = _nearest(results, groups, todo, settings.neighbors)

    if settings.provider == "openai" and not settings.dry_run and todo and not settings.api_key:
        raise ValueError(
            f"No API key: set the {API_KEY_ENV} environment variable (the plugin "
            f"secret {API_KEY_ENV} in the App), or pass api_key; or use "
            "provider='offline' or dry_run=True"
        )

    shown = sorted(set(todo) | {s for c in todo for s in neighbors[c]})
    selected = _select_images(results, shown, settings.num_images)
    all_ids = [sid for sids in selected.values() for sid in sids]
    paths = dict(zip(*dataset.select(all_ids).values(["id", "filepath"]))) if all_ids else {}

    summary = {
        "run_key": run_key,
        "provider": settings.provider,
        "model": settings.model if settings.provider == "openai" else None,
        "base_url": _public_url(settings.base_url) if settings.provider == "openai" else None,
        "dry_run": bool(settings.dry_run),
        "name_field": name_field,
        "named": [],
        "skipped": skipped,
        "requests_planned": len(todo) if settings.provider == "openai" else 0,
        "requests_sent": 0,
        "renamed": [],
        "images": 0,
        "image_bytes": 0,
        "payload_bytes": 0,
    }
    outcomes = {}  # cluster -> {"name", "description", "error", "images"}
    kept = {int(c): old_names[c] for c in skipped}

    with progress_or_bar(progress, f"Naming clusters of '{run_key}'") as report:
        report(0.0, f"{len(todo)} clusters to name")
        if settings.provider == "offline":
            mine = {c: selected[c] for c in todo}
            summary["images"] = sum(1 for sids in mine.values() for sid in sids if sid in paths)
            if todo and not settings.dry_run:
                offline, offline_model = _offline_names(mine, paths, progress=lambda f, m="": report(0.95 * f, m))
                summary["model"] = offline_model
                outcomes.update(_distinct_classes(offline, groups, kept))
        else:
            context = {c: (neighbors[c], parent_names.get(c)) for c in todo}
            outcomes = _run_openai(todo, selected, paths, sizes, context, groups, kept, settings, summary, report)
        errors = {str(c): o["error"] for c, o in outcomes.items() if o.get("error")}
        if todo and not settings.dry_run and not any(o.get("name") for o in outcomes.values()):
            listed = "; ".join(f"cluster {c}: {m}" for c, m in list(errors.items())[:3])
            raise RuntimeError(f"No cluster of run '{run_key}' could be named ({len(errors)} failed): {listed}")
        if not settings.dry_run:
            _store(edit, settings.provider, summary, outcomes)
        report(1.0, "done")

    names = dict(getattr(results, "names", None) or {}) if not settings.dry_run else dict(old_names)
    descriptions = dict(getattr(results, "descriptions", None) or {}) if not settings.dry_run else dict(old_desc)
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
                else "dry run" if settings.dry_run
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


def _shared_names(outcomes, groups, kept):
    """``{cluster: names its siblings hold}`` for the clusters named now whose
    name a sibling holds too (kept names, or named now; of two clusters named
    now, the larger keeps the name: it comes first in ``outcomes``' order)."""
    named = {c: o["name"] for c, o in outcomes.items() if o.get("name")}
    holder = {}
    shared = {}
    for c, name in named.items():
        siblings = groups.get(c, [])
        taken = {kept[s] for s in siblings if s in kept} | {holder[s] for s in siblings if s in holder}
        if name.casefold() in {t.casefold() for t in taken}:
            shared[c] = sorted(taken | {named[s] for s in siblings if s in named})
        else:
            holder[c] = name
    return shared


#: errors of a first request that no retry or other cluster would fix
_FATAL_STATUS = (401, 403, 404)


def _run_openai(todo, selected, paths, sizes, context, groups, kept, settings, summary, report):
    secret = settings.api_key
    outcomes = {}
    lock = threading.Lock()
    encoded = {}  # sample id -> (mime, bytes), shared by the clusters that show it

    def images_of(sids):
        images, problems = [], []
        for sid in sids:
            path = paths.get(sid)
            if path is None:
                problems.append(f"sample {sid} no longer exists")
                continue
            with lock:
                cached = encoded.get(sid)
            if cached is None:
                try:
                    mime, data, _ = encode_image(path, settings.max_side)
                except Exception as e:  # unreadable image: skip it
                    problems.append(f"{os.path.basename(path)}: {type(e).__name__}: {e}")
                    continue
                cached = (mime, data)
                with lock:
                    encoded[sid] = cached
            images.append(cached)
        return images, problems

    def prepare(c, taken=()):
        images, problems = images_of(selected[c])
        if not images:
            raise ValueError("no readable image: " + "; ".join(problems))
        neighbors, parent = context[c]
        shown = [(s, images_of(selected[s][: settings.neighbor_images])[0]) for s in neighbors]
        shown = [(s, imgs) for s, imgs in shown if imgs]
        messages = build_messages(
            c, int(sizes[c]), images, settings.describe, settings.max_side, neighbors=shown, parent=parent, taken=taken
        )
        everything = images + [img for _, imgs in shown for img in imgs]
        with lock:
            summary["images"] += len(everything)
            summary["image_bytes"] += sum(len(d) for _, d in everything)
            summary["payload_bytes"] += len(json.dumps({"model": settings.model, "messages": messages}))
        return messages, len(images)

    if settings.dry_run:
        for i, c in enumerate(todo):
            try:
                prepare(c)
            except Exception as e:
                outcomes[c] = {"error": _describe_error(e)}
            report((i + 1) / max(1, len(todo)), f"{i + 1}/{len(todo)} clusters prepared")
        return outcomes

    if not todo:
        return outcomes
    namer = _OpenAINamer(settings.api_key, settings.model, settings.base_url, settings.timeout,
                         settings.max_retries, settings.describe)
    t_end = time.monotonic() + settings.deadline

    def ask(c, messages, n, first=False):
        t0 = time.perf_counter()
        name, description = namer(messages, first=first, timeout=min(settings.timeout, settings.deadline))
        return {"name": name, "description": description, "images": n, "seconds": round(time.perf_counter() - t0, 3)}

    def work(c, taken=()):
        return ask(c, *prepare(c, taken))

    def run_all(jobs, step):
        """Runs ``{cluster: taken names}`` on the pool until the deadline;
        ``step(c, outcome)`` takes each outcome."""
        futures = {pool.submit(work, c, taken): c for c, taken in jobs.items()}
        try:
            for future in as_completed(futures, timeout=max(0.0, t_end - time.monotonic())):
                c = futures[future]
                try:
                    step(c, future.result())
                except Exception as e:
                    step(c, {"error": _describe_error(e, secret)})
        except FuturesTimeout:
            for c in jobs:
                step(c, {"error": f"not named within the deadline of {settings.deadline:g} s"}, late=True)

    queue = list(todo)
    pool = ThreadPoolExecutor(max_workers=min(settings.max_concurrency, len(todo)), thread_name_prefix="label_clusters")
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
        report(0.9 * len(outcomes) / len(todo), f"{len(outcomes)}/{len(todo)} clusters")

        def first_round(c, outcome, late=False):
            if late:
                outcomes.setdefault(c, outcome)
                return
            outcomes[c] = outcome
            report(0.9 * len(outcomes) / len(todo), f"{len(outcomes)}/{len(todo)} clusters")

        run_all({c: () for c in queue}, first_round)
        # siblings that got the same name: asked again, once, with the names taken
        ordered = dict(sorted(outcomes.items(), key=lambda kv: -int(sizes[kv[0]])))
        again = _shared_names(ordered, groups, kept)
        summary["renamed"] = sorted(str(c) for c in again)

        def second_round(c, outcome, late=False):
            if outcome.get("name") and outcome["name"].casefold() not in {t.casefold() for t in again[c]}:
                outcomes[c] = outcome

        if again:
            report(0.92, f"asking again for {len(again)} clusters whose name a sibling has")
            run_all(again, second_round)
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
