"""The TensorFlow Addons "TripletSemiHardLoss" tutorial (tensorflow.org/addons/tutorials/losses_triplet,
Apache License 2.0, The TensorFlow Authors) as a script: the reference that the pipeline's time and
quality are compared with. Its code is kept as the tutorial wrote it (so ruff skips this file), except
the data source: MNIST from the offline pickle (TFDS cannot download here) instead of tfds.load.
Runs in the TensorFlow Addons environment `bench/.tfa-venv` (TF 2.15 + tensorflow-addons 0.23;
bench_losses.py creates it). Prints epoch times, then one JSON line: fit seconds and the
leave-one-out retrieval metrics of the test embeddings.

  bench/.tfa-venv/bin/python bench/tfa_tutorial.py MNIST_PICKLE [EPOCHS]
"""
import gzip, pickle, sys, time, json
import numpy as np, tensorflow as tf, tensorflow_addons as tfa

path = sys.argv[1]; epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
(tx, ty), (vx, vy), (sx, sy) = pickle.load(gzip.open(path), encoding="latin1")
u8 = lambda x: np.round(x * 256).astype(np.uint8).reshape(-1, 28, 28, 1)
train_x, train_y = u8(np.concatenate([tx, vx])), np.concatenate([ty, vy])
test_x, test_y = u8(sx), sy

def _normalize_img(img, label):
    return tf.cast(img, tf.float32) / 255., label

train_dataset = tf.data.Dataset.from_tensor_slices((train_x, train_y)).shuffle(1024).batch(32).map(_normalize_img)
test_dataset = tf.data.Dataset.from_tensor_slices((test_x, test_y)).batch(32).map(_normalize_img)

model = tf.keras.Sequential([
    tf.keras.layers.Conv2D(filters=64, kernel_size=2, padding='same', activation='relu', input_shape=(28, 28, 1)),
    tf.keras.layers.MaxPooling2D(pool_size=2), tf.keras.layers.Dropout(0.3),
    tf.keras.layers.Conv2D(filters=32, kernel_size=2, padding='same', activation='relu'),
    tf.keras.layers.MaxPooling2D(pool_size=2), tf.keras.layers.Dropout(0.3),
    tf.keras.layers.Flatten(), tf.keras.layers.Dense(256, activation=None),
    tf.keras.layers.Lambda(lambda x: tf.math.l2_normalize(x, axis=1))])
model.compile(optimizer=tf.keras.optimizers.Adam(0.001), loss=tfa.losses.TripletSemiHardLoss())

class T(tf.keras.callbacks.Callback):
    def on_epoch_begin(self, e, logs=None): self.t = time.perf_counter()
    def on_epoch_end(self, e, logs=None): print(f"epoch {e+1} {time.perf_counter()-self.t:.1f}s loss {logs['loss']:.4f}", flush=True)
t0 = time.perf_counter()
model.fit(train_dataset, epochs=epochs, verbose=0, callbacks=[T()])
train_s = time.perf_counter() - t0
emb = model.predict(test_dataset, verbose=0)

def retrieval(emb, y):
    """Leave-one-out on the test split: P@1, R-Precision, MAP@R (Musgrave et al. 2020)."""
    sim = emb @ emb.T; np.fill_diagonal(sim, -np.inf)
    order = np.argsort(-sim, axis=1, kind="stable")
    counts = np.bincount(y); R = counts[y] - 1
    p1 = np.mean(y[order[:, 0]] == y)
    rp, mapr = [], []
    for i in range(len(y)):
        r = R[i]
        hits = (y[order[i, :r]] == y[i])
        rp.append(hits.mean())
        prec = np.cumsum(hits) / np.arange(1, r + 1)
        mapr.append((prec * hits).sum() / r)
    return float(p1), float(np.mean(rp)), float(np.mean(mapr))
p1, rprec, mapr = retrieval(emb, test_y)
print(json.dumps(dict(epochs=epochs, train_seconds=round(train_s, 1), precision_at_1=round(p1, 4),
                      r_precision=round(rprec, 4), map_at_r=round(mapr, 4))))
