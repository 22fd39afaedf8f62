"""JAX's side of the side-by-side benchmark: the models and steps of benches/side_by_side.rs.

Reads lines `model variant method steps` on stdin and answers `ok <ms>` for that many steps (the
variant is ignored: XLA fuses on its own). Steps are jit-compiled on first use; answers are the time
of the steps alone, each waited for with block_until_ready. Run by scripts/side_by_side.py.
"""

import sys
import time

import jax
import jax.numpy as jnp

EPS = 0.5  # FGM radius and gradient-penalty weight, as the Rust side
SIGMA = 0.1  # Hutchinson noise scale
WIDTH = 128


def dense(key, fan_in, fan_out):
    bound = 1.0 / fan_in**0.5
    k1, k2 = jax.random.split(key)
    return {
        "w": jax.random.uniform(k1, (fan_in, fan_out), jnp.float32, -bound, bound),
        "b": jax.random.uniform(k2, (fan_out,), jnp.float32, -bound, bound),
    }


def apply(layer, x):
    return x @ layer["w"] + layer["b"]


def gelu(x):
    return jax.nn.gelu(x, approximate=False)


def cross_entropy(logits, labels):
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], axis=1))


def layer_norm(x, p):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean((x - mean) ** 2, axis=-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + 1e-5) * p["weight"] + p["bias"]


def norm_params():
    return {"weight": jnp.ones(WIDTH, jnp.float32), "bias": jnp.zeros(WIDTH, jnp.float32)}


def attention_params(keys, width):
    """Query, key, value and output projections, drawn in that order from the iterator `keys`."""
    return {name: dense(next(keys), width, width) for name in ("query", "key", "value", "out")}


def random_tokens(keys, batch, tokens, vocab):
    """A mask (each row a random length in 1..tokens, then padding) and ids in 1..vocab under it."""
    lengths = jax.random.randint(next(keys), (batch,), 1, tokens + 1)
    mask = (jnp.arange(tokens)[None, :] < lengths[:, None]).astype(jnp.float32)
    ids = jax.random.randint(next(keys), (batch, tokens), 1, vocab) * mask.astype(jnp.int32)
    return mask, ids


def mlp_model(key):
    keys = jax.random.split(key, 5)
    widths = [512, 512, 512, 10]
    params = [dense(keys[i], widths[i], widths[i + 1]) for i in range(3)]
    x = jax.random.normal(keys[3], (256, 512), jnp.float32)
    y = jax.random.randint(keys[4], (256,), 0, 10)

    def loss(params, delta):
        h = x + delta
        for i, layer in enumerate(params):
            h = apply(layer, h)
            if i + 1 < len(params):
                h = gelu(h)
        return cross_entropy(h, y)

    return params, loss, x.shape, jnp.ones((256, 1), jnp.float32)


def embedding_model(key):
    batch, tokens, vocab = 32, 32, 5000
    keys = iter(jax.random.split(key, 32))
    params = {
        "embedding": jax.random.normal(next(keys), (vocab, WIDTH), jnp.float32),
        "blocks": [
            {
                "norm1": norm_params(),
                **attention_params(keys, WIDTH),
                "norm2": norm_params(),
                "up": dense(next(keys), WIDTH, 4 * WIDTH),
                "down": dense(next(keys), 4 * WIDTH, WIDTH),
            }
            for _ in range(2)
        ],
        "norm": norm_params(),
        "classifier": dense(next(keys), WIDTH, 10),
    }
    mask, ids = random_tokens(keys, batch, tokens, vocab)
    y = jax.random.randint(next(keys), (batch,), 0, 10)
    key_bias = (mask[:, None, :] - 1.0) * 1e4

    def loss(params, delta):
        h = params["embedding"][ids] + delta
        for block in params["blocks"]:
            x = layer_norm(h, block["norm1"])
            q, k = apply(block["query"], x), apply(block["key"], x)
            scores = q @ jnp.swapaxes(k, 1, 2) / WIDTH**0.5
            attention = jax.nn.softmax(scores + key_bias, axis=-1)
            h = h + apply(block["out"], attention @ apply(block["value"], x))
            x = layer_norm(h, block["norm2"])
            h = h + apply(block["down"], gelu(apply(block["up"], x)))
        h = layer_norm(h, params["norm"])
        m = mask[:, :, None]
        pooled = jnp.sum(h * m, axis=1) / jnp.sum(m, axis=1)
        return cross_entropy(apply(params["classifier"], pooled), y)

    return params, loss, (batch, tokens, WIDTH), mask[:, :, None]


def conv(layer, x):
    """A 5x5 stride-2 convolution with padding 2, NCHW, as candle's conv2d in advtrain::models::Cnn."""
    y = jax.lax.conv_general_dilated(
        x, layer["w"], (2, 2), ((2, 2), (2, 2)), dimension_numbers=("NCHW", "OIHW", "NCHW")
    )
    return y + layer["b"][None, :, None, None]


def conv_params(key, channels_in, channels_out):
    bound = 1.0 / (channels_in * 25) ** 0.5
    k1, k2 = jax.random.split(key)
    return {
        "w": jax.random.uniform(k1, (channels_out, channels_in, 5, 5), jnp.float32, -bound, bound),
        "b": jax.random.uniform(k2, (channels_out,), jnp.float32, -bound, bound),
    }


def cnn_model(key):
    """The experiments' MNIST CNN: 28x28 -> 16 x 14x14 -> 32 x 7x7 (GELU after each) -> 10, batch 64."""
    keys = jax.random.split(key, 5)
    params = {
        "conv1": conv_params(keys[0], 1, 16),
        "conv2": conv_params(keys[1], 16, 32),
        "classifier": dense(keys[2], 32 * 7 * 7, 10),
    }
    x = jax.random.uniform(keys[3], (64, 28 * 28), jnp.float32)
    y = jax.random.randint(keys[4], (64,), 0, 10)

    def loss(params, delta):
        h = (x + delta).reshape(64, 1, 28, 28)
        h = gelu(conv(params["conv1"], h))
        h = gelu(conv(params["conv2"], h))
        return cross_entropy(apply(params["classifier"], h.reshape(64, -1)), y)

    return params, loss, x.shape, jnp.ones((64, 1), jnp.float32)


def minilm_model(key):
    """A MiniLM-sized BERT (6 post-norm layers, width 384, 12 heads, feed-forward 1536, GELU, layer
    norm eps 1e-12), random weights, 64 tokens, batch MINILM_BATCH (8), mean pooling, 10 classes."""
    import os

    batch, tokens, vocab, width, heads = int(os.environ.get("MINILM_BATCH", 8)), 64, 30522, 384, 12
    keys = iter(jax.random.split(key, 64))

    def norm():
        return {"weight": jnp.ones(width, jnp.float32), "bias": jnp.zeros(width, jnp.float32)}

    def embedding(rows):
        return 0.02 * jax.random.normal(next(keys), (rows, width), jnp.float32)

    params = {
        "word": embedding(vocab),
        "position": embedding(512),
        "token_type": embedding(2),
        "norm": norm(),
        "layers": [
            {
                **attention_params(keys, width),
                "attention_norm": norm(),
                "up": dense(next(keys), width, 4 * width),
                "down": dense(next(keys), 4 * width, width),
                "output_norm": norm(),
            }
            for _ in range(6)
        ],
        "classifier": dense(next(keys), width, 10),
    }
    mask, ids = random_tokens(keys, batch, tokens, vocab)
    y = jax.random.randint(next(keys), (batch,), 0, 10)
    key_bias = (mask[:, None, None, :] - 1.0) * 1e4

    def ln(x, p):
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean((x - mean) ** 2, axis=-1, keepdims=True)
        return (x - mean) / jnp.sqrt(var + 1e-12) * p["weight"] + p["bias"]

    def split(x):
        return x.reshape(batch, tokens, heads, width // heads).transpose(0, 2, 1, 3)

    def loss(params, delta):
        e = params["word"][ids]
        h = ln(e + delta + params["position"][:tokens] + params["token_type"][0], params["norm"])
        for layer in params["layers"]:
            q, k, v = (split(apply(layer[name], h)) for name in ("query", "key", "value"))
            scores = q @ jnp.swapaxes(k, 2, 3) / (width // heads) ** 0.5 + key_bias
            context = (jax.nn.softmax(scores, axis=-1) @ v).transpose(0, 2, 1, 3)
            h = ln(h + apply(layer["out"], context.reshape(batch, tokens, width)), layer["attention_norm"])
            h = ln(h + apply(layer["down"], gelu(apply(layer["up"], h))), layer["output_norm"])
        m = mask[:, :, None]
        pooled = jnp.sum(h * m, axis=1) / jnp.sum(m, axis=1)
        return cross_entropy(apply(params["classifier"], pooled), y)

    return params, loss, (batch, tokens, width), mask[:, :, None]


def steps(loss, shape, mask):
    """The four steps as jitted functions of (params, key) returning (loss, gradients)."""
    zero = jnp.zeros(shape, jnp.float32)
    grad_both = jax.value_and_grad(loss, argnums=(0, 1))

    def plain(params, key):
        return jax.value_and_grad(loss)(params, zero)

    def fgm(params, key):
        clean, (g_params, g_delta) = grad_both(params, zero)
        d = g_delta * mask
        delta = jax.lax.stop_gradient(EPS * d / jnp.sqrt(jnp.sum(d * d)))
        adversarial, a_params = jax.value_and_grad(loss)(params, delta)
        return clean + adversarial, jax.tree.map(jnp.add, g_params, a_params)

    def gradient_penalty(params, key):
        def total(params):
            clean, g = jax.value_and_grad(loss, argnums=1)(params, zero)
            return clean + EPS * 0.5 * jnp.sum(g * g)

        return jax.value_and_grad(total)(params)

    def hutchinson(params, key):
        v = jax.random.rademacher(key, shape, jnp.float32) * mask

        def total(params):
            clean, g = jax.value_and_grad(loss, argnums=1)(params, zero)
            _, hv = jax.jvp(lambda d: jax.grad(loss, argnums=1)(params, d), (zero,), (v,))
            return clean + SIGMA**2 / 2 * jnp.sum(v * hv)

        return jax.value_and_grad(total)(params)

    return {
        name: jax.jit(f)
        for name, f in [
            ("plain", plain),
            ("fgm", fgm),
            ("gradient_penalty", gradient_penalty),
            ("hutchinson_1", hutchinson),
        ]
    }


def main():
    key = jax.random.PRNGKey(0)
    models = {}
    builders = {
        "mlp": mlp_model,
        "embedding": embedding_model,
        "cnn": cnn_model,
        "minilm": minilm_model,
    }

    def model_for(name):
        """Built on first use: MiniLM's embedding matrix alone is 47 MB."""
        if name not in models:
            index = list(builders).index(name)
            params, loss, shape, mask = builders[name](jax.random.fold_in(key, index))
            models[name] = (params, steps(loss, shape, mask))
        return models[name]

    step_key = jax.random.PRNGKey(1)
    for line in sys.stdin:
        words = line.split()
        if words == ["quit"]:
            break
        try:
            model, _variant, method, count = words
            params, fns = model_for(model)
            fn = fns[method]
            started = time.perf_counter()
            for _ in range(int(count)):
                if method == "hutchinson_1":  # only the probe needs fresh randomness
                    step_key, sub = jax.random.split(step_key)
                else:
                    sub = step_key
                value, grads = fn(params, sub)
                jax.block_until_ready((value, grads))
            answer = f"ok {(time.perf_counter() - started) * 1e3}"
        except Exception as e:  # the driver shows the message
            answer = "error " + str(e).replace("\n", " ")
        print(answer, flush=True)


if __name__ == "__main__":
    main()
