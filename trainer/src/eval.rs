//! Retrieval recall and zero-shot accuracy over L2-normalised embeddings, the numbers `wit eval`
//! reports. Ties count against the model (a tie with a wrong candidate ranks the true one lower),
//! so a collapsed model scores chance, not perfect.

use crate::model::{clip_loss, l2_normalize, ClipModel};
use crate::TrainError;
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

/// Recall at 1, 5 and 10: the fraction of queries whose true match ranks within the top k.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recall {
    /// Recall@1.
    pub r1: f64,
    /// Recall@5.
    pub r5: f64,
    /// Recall@10.
    pub r10: f64,
}

/// Both retrieval directions over `n` matched pairs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Retrieval {
    /// Number of pairs.
    pub n: usize,
    /// Images as queries, captions as candidates.
    pub image_to_text: Recall,
    /// Captions as queries, images as candidates.
    pub text_to_image: Recall,
}

/// The 0-based rank of the true candidate `truth` in `scores` (ties rank it lower).
pub fn rank_of(scores: &[f64], truth: usize) -> usize {
    let s = scores[truth];
    scores
        .iter()
        .enumerate()
        .filter(|&(j, &x)| j != truth && x >= s)
        .count()
}

fn recall(ranks: &[usize]) -> Recall {
    let at = |k: usize| ranks.iter().filter(|&&r| r < k).count() as f64 / ranks.len().max(1) as f64;
    Recall {
        r1: at(1),
        r5: at(5),
        r10: at(10),
    }
}

fn similarity(a: &Tensor, b: &Tensor) -> Result<Vec<Vec<f64>>, TrainError> {
    Ok(a.to_dtype(DType::F64)?
        .matmul(&b.to_dtype(DType::F64)?.t()?)?
        .to_vec2::<f64>()?)
}

/// Every image's score for caption `j`: column `j` of an image × text similarity matrix.
fn column(sim: &[Vec<f64>], j: usize) -> Vec<f64> {
    sim.iter().map(|row| row[j]).collect()
}

/// Recall@1/5/10 both ways for row-matched image and text embeddings `(N, D)` (pair i is row i of each).
pub fn retrieval(image_emb: &Tensor, text_emb: &Tensor) -> Result<Retrieval, TrainError> {
    let sim = similarity(image_emb, text_emb)?;
    let n = sim.len();
    let i2t: Vec<usize> = (0..n).map(|i| rank_of(&sim[i], i)).collect();
    let t2i: Vec<usize> = (0..n).map(|j| rank_of(&column(&sim, j), j)).collect();
    Ok(Retrieval {
        n,
        image_to_text: recall(&i2t),
        text_to_image: recall(&t2i),
    })
}

/// A text→image query that missed: caption `query`'s own image did not rank first, image
/// `retrieved` (another pair's) scored highest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Miss {
    /// The query's pair index.
    pub query: usize,
    /// The pair index of the best-scoring other image.
    pub retrieved: usize,
}

/// Every text→image query whose true image does not rank first (ties count as misses, as in
/// [`retrieval`]), with the image that outscored or tied it; worst first (the largest margin
/// by which the retrieved image beat the true one). What a recall number hides: which captions
/// fail, and against what.
pub fn text_to_image_misses(
    image_emb: &Tensor,
    text_emb: &Tensor,
) -> Result<Vec<Miss>, TrainError> {
    let sim = similarity(image_emb, text_emb)?;
    let mut misses: Vec<(f64, Miss)> = (0..sim.len())
        .filter_map(|j| {
            let scores = column(&sim, j);
            if rank_of(&scores, j) == 0 {
                return None;
            }
            let retrieved = (0..scores.len())
                .filter(|&i| i != j)
                .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))?;
            let miss = Miss {
                query: j,
                retrieved,
            };
            Some((scores[retrieved] - scores[j], miss))
        })
        .collect();
    misses.sort_by(|a, b| b.0.total_cmp(&a.0));
    Ok(misses.into_iter().map(|(_, m)| m).collect())
}

/// One embedding per class: the mean of the class's prompt embeddings (`templates` with `{}` replaced
/// by the label), renormalised — CLIP's prompt ensembling. `tokenize` turns captions into `(N, L)` ids.
pub fn class_embeddings<T>(
    model: &ClipModel,
    labels: &[String],
    templates: &[String],
    tokenize: T,
) -> Result<Tensor, TrainError>
where
    T: Fn(&[String]) -> Result<Tensor, TrainError>,
{
    let rows = labels
        .iter()
        .map(|label| {
            let prompts: Vec<String> = templates.iter().map(|t| t.replace("{}", label)).collect();
            let emb = model.encode_text(&tokenize(&prompts)?)?.detach();
            Ok(l2_normalize(&emb.mean_keepdim(0)?)?)
        })
        .collect::<Result<Vec<_>, TrainError>>()?;
    Ok(Tensor::cat(&rows, 0)?)
}

/// Zero-shot accuracy: each image is assigned the class whose embedding is most similar; `truth[i]`
/// is image i's class index into the rows of `class_emb`.
pub fn zero_shot_accuracy(
    image_emb: &Tensor,
    class_emb: &Tensor,
    truth: &[usize],
) -> Result<f64, TrainError> {
    let sim = similarity(image_emb, class_emb)?;
    let correct = sim
        .iter()
        .zip(truth)
        .filter(|(row, &t)| rank_of(row, t) == 0)
        .count();
    Ok(correct as f64 / truth.len().max(1) as f64)
}

/// open_clip's `clip_val_loss`: the CLIP loss of each run of `chunk` consecutive pairs (its
/// validation batches) at the model's `logit_scale`, averaged over pairs. Per chunk, as open_clip
/// computes it, because the loss of a batch grows with the number of wrong candidates in it;
/// the same chunk size keeps runs comparable.
pub fn validation_loss(
    image_emb: &Tensor,
    text_emb: &Tensor,
    logit_scale: &Tensor,
    chunk: usize,
) -> Result<f64, TrainError> {
    let (n, chunk) = (image_emb.dim(0)?, chunk.max(1));
    let scale = logit_scale.to_dtype(DType::F64)?;
    let mut total = 0.0;
    for start in (0..n).step_by(chunk) {
        let len = chunk.min(n - start);
        let part = |t: &Tensor| t.narrow(0, start, len)?.to_dtype(DType::F64);
        let loss = clip_loss(&part(image_emb)?, &part(text_emb)?, None, &scale)?;
        total += loss.to_scalar::<f64>()? * len as f64;
    }
    Ok(total / n.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn tensor(rows: &[[f32; 3]]) -> Tensor {
        Tensor::new(rows.concat(), &Device::Cpu)
            .and_then(|t| t.reshape((rows.len(), 3)))
            .unwrap()
    }

    #[test]
    fn ties_rank_the_true_candidate_last() {
        assert_eq!(rank_of(&[0.5, 0.5, 0.1], 0), 1);
        assert_eq!(rank_of(&[0.9, 0.5, 0.1], 0), 0);
        assert_eq!(rank_of(&[0.1, 0.5, 0.9], 0), 2);
    }

    #[test]
    fn retrieval_counts_recall_at_k_both_ways() {
        // 3 pairs: pair 0 and 1 are perfectly matched; image 2 is closest to text 0.
        let img = tensor(&[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.8, 0.0, 0.6]]);
        let txt = tensor(&[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);
        let r = retrieval(&img, &txt).unwrap();
        assert_eq!(r.n, 3);
        assert!((r.image_to_text.r1 - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(r.image_to_text.r5, 1.0);
        // Text 2's best image is image 2 (0.6 vs 0): all three texts retrieve their image.
        assert_eq!(r.text_to_image.r1, 1.0);
    }

    #[test]
    fn misses_are_the_text_queries_outside_recall_at_1_worst_first() {
        // Text 0 is closest to image 2 (by 0.3), text 1 ties images 1 and 0, text 2 is a hit.
        let img = tensor(&[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);
        let txt = tensor(&[[0.5, 0.0, 0.8], [0.6, 0.6, 0.0], [0.0, 0.0, 1.0]]);
        let misses = text_to_image_misses(&img, &txt).unwrap();
        let want = [
            Miss {
                query: 0,
                retrieved: 2,
            },
            Miss {
                query: 1,
                retrieved: 0,
            },
        ];
        assert_eq!(misses, want);
        let r = retrieval(&img, &txt).unwrap();
        assert_eq!(
            misses.len() as f64,
            (1.0 - r.text_to_image.r1) * 3.0,
            "a miss for every query outside R@1"
        );
    }

    #[test]
    fn validation_loss_is_the_pair_weighted_mean_of_each_chunks_clip_loss() {
        let (im, tx) = (
            [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.8, 0.0, 0.6]],
            [[1.0, 0.0, 0.0], [0.0, 0.6, 0.8], [0.0, 0.0, 1.0]],
        );
        let (img, txt) = (tensor(&im), tensor(&tx));
        let scale = Tensor::new(2f32, &Device::Cpu).unwrap();
        let whole = validation_loss(&img, &txt, &scale, 3).unwrap();
        // By hand: logits e²·cos; the symmetric cross-entropy averaged over rows and columns.
        let e2 = 2f64.exp();
        let dot = |a: [f32; 3], b: [f32; 3]| {
            (0..3)
                .map(|k| f64::from(a[k]) * f64::from(b[k]))
                .sum::<f64>()
        };
        let cos: Vec<[f64; 3]> = im
            .iter()
            .map(|&a| [dot(a, tx[0]), dot(a, tx[1]), dot(a, tx[2])])
            .collect();
        let ce = |scores: [f64; 3], truth: usize| {
            let lse = scores.iter().map(|s| (s * e2).exp()).sum::<f64>().ln();
            lse - scores[truth] * e2
        };
        let rows: f64 = (0..3).map(|i| ce(cos[i], i)).sum::<f64>() / 3.0;
        let cols: f64 = (0..3)
            .map(|j| ce([cos[0][j], cos[1][j], cos[2][j]], j))
            .sum::<f64>()
            / 3.0;
        assert!((whole - (rows + cols) / 2.0).abs() < 1e-9, "{whole}");
        // One pair per chunk has no wrong candidate: no loss at all.
        assert!(validation_loss(&img, &txt, &scale, 1).unwrap().abs() < 1e-12);
        // Chunks of 2 and 1: the first chunk's loss weighted 2, the last pair's 0.
        let first = validation_loss(
            &img.narrow(0, 0, 2).unwrap(),
            &txt.narrow(0, 0, 2).unwrap(),
            &scale,
            2,
        )
        .unwrap();
        let split = validation_loss(&img, &txt, &scale, 2).unwrap();
        assert!(
            (split - first * 2.0 / 3.0).abs() < 1e-12,
            "{split} vs {first}"
        );
    }

    #[test]
    fn zero_shot_picks_the_most_similar_class() {
        let img = Tensor::new(&[[1f32, 0.0], [0.0, 1.0], [0.6, 0.8]], &Device::Cpu).unwrap();
        let classes = Tensor::new(&[[1f32, 0.0], [0.0, 1.0]], &Device::Cpu).unwrap();
        let acc = zero_shot_accuracy(&img, &classes, &[0, 1, 0]).unwrap();
        assert!((acc - 2.0 / 3.0).abs() < 1e-12);
    }
}
