"""Faithful reimplementation of the seeds' clustering algorithm (baseline only).

The functions reproduce ``get_loss_func``, ``update_center`` and
``generalized_clustering`` of the original notebook (random initial centers
drawn from the data with ``np.random.choice``, at most 3 iterations, assignment
by Python loops over every (sample, center) pair, closed-form mean / median or
``scipy.optimize.minimize(method="BFGS", options={"maxiter": 20})`` started at
the cluster mean with a numerically differentiated objective, convergence on
the summed center shift). Only the progress bar and prints are left out.
"""

import numpy as np
from scipy.optimize import minimize

#: engine loss name -> the notebook's name
SEED_NAMES = {
    "squared": "square",
    "absolute": "absolute",
    "huber": "huber",
    "pseudo_huber": "pseudo_huber",
    "correntropy": "correntropy",
    "epsilon_insensitive": "epsilon_insensitive",
}
#: engine loss name -> the notebook's parameter key
PARAM_KEYS = {"huber": "delta", "pseudo_huber": "delta", "correntropy": "sigma",
              "epsilon_insensitive": "epsilon"}


def get_loss_func(loss_type, params=None):
    params = {} if params is None else params
    if loss_type == 'square':

        def loss(x, mu):
            return np.sum((x - mu)**2)
        return loss

    elif loss_type == 'absolute':

        def loss(x, mu):
            return np.sum(np.abs(x - mu))
        return loss

    elif loss_type == 'huber':

        delta = params.get('delta', 1.0)

        def loss(x, mu):
            res = np.abs(x - mu)
            return np.sum(np.where(res <= delta,
                                   0.5 * res**2,
                                   delta * (res - 0.5 * delta)))
        return loss

    elif loss_type == 'pseudo_huber':

        delta = params.get('delta', 1.0)

        def loss(x, mu):
            res = x - mu
            return np.sum(delta**2 * (np.sqrt(1 + (res / delta)**2) - 1))
        return loss
    elif loss_type == 'correntropy':
        sigma = params.get('sigma', 1.0)

        def loss(x, mu):
            d2 = np.sum((x - mu)**2)
            return 1 - np.exp(-d2 / (2 * sigma**2))
        return loss
    elif loss_type == 'epsilon_insensitive':
        epsilon = params.get('epsilon', 1.0)

        def loss(x, mu):
            d = np.linalg.norm(x - mu)
            return max(0, d - epsilon)
        return loss


def update_center(points, loss_type, params):
    if len(points) == 0:
        return np.zeros(points.shape[1])
    if loss_type == 'square':
        return np.mean(points, axis=0)
    elif loss_type == 'absolute':
        return np.median(points, axis=0)
    else:
        def objective(mu):
            loss_func = get_loss_func(loss_type, params)
            total_loss = sum(loss_func(x, mu) for x in points)
            return total_loss

        initial_guess = np.mean(points, axis=0)
        result = minimize(
            objective,
            initial_guess,
            method='BFGS',
            options={'maxiter': 20}
        )
        return result.x


def generalized_clustering(data, k, loss_type, params=None, max_iter=3, tol=1e-4):
    params = {} if params is None else params
    n, d = data.shape
    centers = data[np.random.choice(n, k, replace=False)]
    prev_shift = np.inf
    for iter in range(max_iter):
        # Assign each point to nearest center
        dists = np.array([[get_loss_func(loss_type, params)(data[i], centers[j])
                          for j in range(k)]
                         for i in range(n)])
        labels = np.argmin(dists, axis=1)

        #  Update centers
        new_centers = np.zeros((k, d))
        for j in range(k):
            points_j = data[labels == j]
            if len(points_j) > 0:
                new_centers[j] = update_center(points_j, loss_type, params)
        # Check convergence
        shift = np.sum(np.linalg.norm(new_centers - centers, axis=1))
        centers = new_centers
        if shift < tol or abs(shift - prev_shift) < 1e-6:
            break
        prev_shift = shift
    return centers, labels
