"""LDA for the factors: scikit-learn's, with its E-step run over many documents at once."""

import copy

import numpy as np
from joblib import effective_n_jobs
from scipy import sparse
from scipy.special import psi
from sklearn.decomposition import LatentDirichletAllocation
from sklearn.utils import gen_even_slices


def _expectation(gamma: np.ndarray) -> np.ndarray:
    """``exp(E[log theta])`` of each row of Dirichlet parameters: exp(psi(g) - psi(sum g))."""
    return np.exp(psi(gamma) - psi(gamma.sum(axis=1, keepdims=True))).astype(gamma.dtype, copy=False)


class VectorisedLDA(LatentDirichletAllocation):
    """scikit-learn's ``LatentDirichletAllocation``, its E-step vectorised.

    scikit-learn updates each document's topic mixture in a loop of its own; here every
    document of a mini-batch is updated together with matrix products (the documents whose mean
    change fell below ``mean_change_tol`` leave the active set, as each leaves scikit-learn's
    loop), in one process whose BLAS uses every core. The initial mixtures are drawn as
    scikit-learn draws them (with ``n_jobs`` above 1, each of its worker processes starts from a
    copy of the random state), so the fit is scikit-learn's to float rounding (tested against
    it: components within 1e-5 relative). Several times faster on FMA's shape (``bench/factors.py``).
    """

    ROWS = 4096  # documents densified at a time: 4,096 x 2,048 words is 32 MB

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
        stats = np.zeros(topic_words.shape, dtype=X.dtype) if cal_sstats else None
        for start in range(0, n_docs, self.ROWS):
            rows = slice(start, min(n_docs, start + self.ROWS))
            gamma[rows], block = self._update(X[rows].toarray(), gamma[rows], topic_words, cal_sstats)
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

    def _update(self, counts: np.ndarray, gamma: np.ndarray, topic_words: np.ndarray, cal_sstats: bool):
        """Iterate the mixtures ``gamma`` (docs, topics) of documents ``counts`` (docs, words) to
        convergence; with ``cal_sstats``, their share of the sufficient statistics (topics, words)."""
        eps = np.finfo(counts.dtype).eps
        gamma = gamma.copy()
        expected = _expectation(gamma)
        active = np.arange(len(gamma))
        for _ in range(self.max_doc_update_iter):
            if not len(active):
                break
            theta, words = expected[active], counts[active]
            updated = theta * ((words / (theta @ topic_words + eps)) @ topic_words.T) + self.doc_topic_prior_
            change = np.abs(gamma[active] - updated).mean(axis=1)
            gamma[active], expected[active] = updated, _expectation(updated)
            active = active[change >= self.mean_change_tol]
        stats = expected.T @ (counts / (expected @ topic_words + eps)) if cal_sstats else None
        return gamma, stats
