"""LDA for the factors: scikit-learn's, with its E-step run over many documents at once."""

import copy
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from joblib import effective_n_jobs
from scipy import sparse
from scipy.special import psi
from sklearn.decomposition import LatentDirichletAllocation
from sklearn.utils import gen_even_slices
from threadpoolctl import ThreadpoolController

from agf.engine import usable_cores

_BLAS = ThreadpoolController()


def _log_expectation(gamma: np.ndarray) -> np.ndarray:
    """``E[log theta]`` of each row of Dirichlet parameters: psi(g) - psi(sum g)."""
    return psi(gamma) - psi(gamma.sum(axis=1, keepdims=True))


def _expectation(gamma: np.ndarray) -> np.ndarray:
    """``exp(E[log theta])`` of each row of Dirichlet parameters."""
    return np.exp(_log_expectation(gamma)).astype(gamma.dtype, copy=False)


class VectorisedLDA(LatentDirichletAllocation):
    """scikit-learn's ``LatentDirichletAllocation``, its E-step vectorised.

    scikit-learn updates each document's topic mixture in a loop of its own; here the documents
    of a mini-batch are shared among one thread per core, and each thread updates its documents
    together with matrix products (the documents whose mean change fell below
    ``mean_change_tol`` leave the active set, as each leaves scikit-learn's loop), a tile of
    documents at a time so that the intermediate ratios stay in the core's cache. The initial
    mixtures are drawn as scikit-learn draws them (with ``n_jobs`` above 1, each of its worker
    processes starts from a copy of the random state), so the fit is scikit-learn's to float
    rounding (tested against it: components within 1e-5 relative). The variational bound
    (perplexity) is scikit-learn's, its loop over documents also replaced by matrix products.
    Several times faster on FMA's shape (``bench/factors.py``).
    """

    ROWS = 4096  # documents densified at a time: 4,096 x 2,048 words is 32 MB
    TILE = 64  # documents whose (tile, words) ratios are formed at once: 512 KB of 2,048 words, within L2

    def _e_step(self, X, cal_sstats, random_init, parallel=None):
        X = sparse.csr_matrix(X)
        n_docs, n_topics = X.shape[0], self.components_.shape[0]
        if random_init:
            slices = list(gen_even_slices(n_docs, effective_n_jobs(self.n_jobs)))
            draw = (lambda n: self.random_state_.gamma(100.0, 0.01, (n, n_topics))) if len(slices) == 1 else \
                (lambda n: copy.deepcopy(self.random_state_).gamma(100.0, 0.01, (n, n_topics)))
            gamma = np.vstack([draw(s.stop - s.start) for s in slices]).astype(X.dtype, copy=False)
        else:
            gamma = np.ones((n_docs, n_topics), dtype=X.dtype)
        topic_words = self.exp_dirichlet_component_.astype(X.dtype, copy=False)
        # Documents are independent: each thread iterates its own share, its BLAS on one core,
        # so that the element-wise work runs on every core too (as scikit-learn's n_jobs does).
        threads = min(usable_cores(), max(1, n_docs // self.TILE))
        shares = [rows for share in gen_even_slices(n_docs, threads)
                  for rows in (slice(start, min(share.stop, start + self.ROWS))
                               for start in range(share.start, share.stop, self.ROWS))]

        def update(rows: slice):
            return self._update(X[rows].toarray(), gamma[rows], topic_words, cal_sstats)

        stats = np.zeros(topic_words.shape, dtype=X.dtype) if cal_sstats else None
        with _BLAS.limit(limits=1 if threads > 1 else None, user_api="blas"), ThreadPoolExecutor(threads) as pool:
            for rows, (updated, block) in zip(shares, pool.map(update, shares)):
                gamma[rows] = updated
                if cal_sstats:
                    stats += block
        if cal_sstats:
            stats *= self.exp_dirichlet_component_  # finishes the sufficient statistics, as scikit-learn does
        return gamma, stats

    def factors_and_perplexity(self, X, rows) -> tuple[np.ndarray, float]:
        """The topic mixtures (n_docs, n_topics) of every document of ``X``, and the perplexity of
        the documents at ``rows``, from one E-step (``transform`` and ``perplexity`` take one each)."""
        distribution = self.transform(X, normalize=False)
        perplexity = self._perplexity_precomp_distr(X[rows], distribution[rows], sub_sampling=False)
        return distribution / distribution.sum(axis=1, keepdims=True), float(perplexity)

    def _approx_bound(self, X, doc_topic_distr, sub_sampling):
        """scikit-learn's variational bound, whose loop over each document's words is done here
        with matrix products (:meth:`_words_bound`); scikit-learn computes the rest, given no words."""
        X = sparse.csr_matrix(X)
        rest = super()._approx_bound(sparse.csr_matrix(X.shape, dtype=X.dtype), doc_topic_distr, sub_sampling)
        share = self.total_samples / X.shape[0] if sub_sampling else 1.0  # as scikit-learn scales the documents' terms
        return rest + share * self._words_bound(X, doc_topic_distr)

    def _words_bound(self, X: sparse.csr_matrix, doc_topic_distr: np.ndarray) -> float:
        """E[log p(words | theta, beta)]: each count times log sum_k exp(E[log theta_dk] + E[log beta_kw]),
        in float64, the sum over topics as a product of exponentials shifted by their maxima."""
        log_theta = _log_expectation(np.asarray(doc_topic_distr, np.float64))
        log_beta = _log_expectation(np.asarray(self.components_, np.float64))
        beta_shift = log_beta.max(axis=0)
        beta = np.exp(log_beta - beta_shift)
        total = 0.0
        for start in range(0, X.shape[0], self.ROWS):
            rows = slice(start, start + self.ROWS)
            counts = X[rows].tocoo()
            theta_shift = log_theta[rows].max(axis=1)
            mixed = np.exp(log_theta[rows] - theta_shift[:, None]) @ beta
            log_mixed = np.log(mixed[counts.row, counts.col]) + theta_shift[counts.row] + beta_shift[counts.col]
            total += float(counts.data.astype(np.float64) @ log_mixed)
        return total

    def _update(self, counts: np.ndarray, gamma: np.ndarray, topic_words: np.ndarray, cal_sstats: bool):
        """Iterate the mixtures ``gamma`` (docs, topics) of documents ``counts`` (docs, words) to
        convergence; with ``cal_sstats``, their share of the sufficient statistics (topics, words)."""
        gamma = gamma.copy()
        expected = _expectation(gamma)
        active = np.arange(len(gamma))
        buffer = np.empty((self.TILE, topic_words.shape[1]), counts.dtype)
        for _ in range(self.max_doc_update_iter):
            if not len(active):
                break
            everyone = len(active) == len(gamma)  # no copies while every document is still moving
            theta, words = (expected, counts) if everyone else (expected[active], counts[active])
            updated = theta * self._ratios(words, theta, topic_words, buffer, transposed=False) + self.doc_topic_prior_
            change = np.abs(gamma[active] - updated).mean(axis=1)
            gamma[active], expected[active] = updated, _expectation(updated)
            active = active[change >= self.mean_change_tol]
        stats = self._ratios(counts, expected, topic_words, buffer, transposed=True) if cal_sstats else None
        return gamma, stats

    def _ratios(self, words, theta, topic_words, buffer, transposed: bool) -> np.ndarray:
        """With ``ratio = words / (theta @ topic_words + eps)`` (docs, words): ``ratio @
        topic_words.T`` (docs, topics), or with ``transposed`` ``theta.T @ ratio`` (topics, words).

        Formed ``TILE`` documents at a time in ``buffer``, so that the ratios never leave the
        core's cache between the two products.
        """
        eps = np.finfo(words.dtype).eps
        out = np.zeros(topic_words.shape if transposed else (len(words), len(topic_words)), words.dtype)
        for start in range(0, len(words), self.TILE):
            rows = slice(start, start + self.TILE)
            ratio = buffer[: len(words[rows])]
            np.matmul(theta[rows], topic_words, out=ratio)
            ratio += eps
            np.divide(words[rows], ratio, out=ratio)
            if transposed:
                out += theta[rows].T @ ratio
            else:
                np.matmul(ratio, topic_words.T, out=out[rows])
        return out
