// The JSON bodies of the ImageIQ API, as the service sends them (bentos/schemas.py,
// bentos/catalog_schemas.py, bentos/review_routes.py, and the issue-20 contract for the new
// endpoints). Times are ISO 8601 strings.

export type Scope = "classify" | "label" | "admin";

export interface ErrorEnvelope {
  error: {
    code: string;
    message: string;
    request_id?: string;
    details?: Record<string, unknown> | null;
  };
}

export interface WhoAmI {
  auth_enabled: boolean;
  key: { id: string; name: string; prefix: string } | null;
  scopes: Scope[];
}

export interface ModelRef {
  name: string;
  version: string;
}

export interface ScoredLabel {
  label: string;
  score: number;
}

export interface ImageFacts {
  sha256: string;
  width: number;
  height: number;
  format: string;
  bytes: number;
  /** Present when the image was stored (its sha256). */
  id?: string;
  stored?: boolean;
}

export interface Timing {
  decode: number;
  preprocess: number;
  queue: number;
  inference: number;
  total: number;
}

export interface ClassifyResult {
  model: ModelRef;
  predictions: ScoredLabel[];
  attributes: Record<string, ScoredLabel>;
  image: ImageFacts;
  batch_size: number;
  cached: boolean;
  timing_ms: Timing;
  request_id?: string;
}

export interface ExplainResult {
  model: ModelRef;
  head: string;
  target: ScoredLabel;
  method: string;
  heatmap: { width: number; height: number; png: string; grid: number[][] };
  timing_ms: number;
}

export interface Categories {
  model: ModelRef;
  labels: string[];
  attributes: Record<string, string[]>;
}

export interface ServedModel {
  name: string;
  version: string;
  requested: string;
  active: boolean;
  state: string;
  error?: string | null;
  architecture: string;
  labels_count: number;
  attributes: Record<string, string[]>;
  input_size: number;
  metrics: Record<string, number>;
  created_at: string;
  batching: Record<string, number>;
}

export interface ModelsAnswer {
  active: string | null;
  ready: boolean;
  models: ServedModel[];
  unavailable: Record<string, string>;
  last_reload?: Record<string, unknown> | null;
  dependencies?: Record<string, unknown>;
}

export interface VersionSummary {
  version: string;
  created_at: string;
  /** Null for a version known only from the model repository. */
  architecture: string | null;
  labels_count: number | null;
  metrics: Record<string, number>;
  active: boolean;
  served: boolean;
  in_store?: boolean;
  published?: boolean | null;
}

export interface VersionList {
  name: string;
  active: string | null;
  versions: VersionSummary[];
}

export interface PerClassMetrics {
  label: string;
  precision: number;
  recall: number;
  f1: number;
  support: number;
}

export interface ReliabilityBin {
  lower: number;
  upper: number;
  count: number;
  confidence: number | null;
  accuracy: number | null;
}

export interface Evaluation {
  labels: string[];
  confusion_matrix: number[][];
  per_class: PerClassMetrics[];
  reliability: { ece: number | null; bins: ReliabilityBin[] };
  images?: number | null;
  top1?: number | null;
  temperature?: number | null;
}

export interface VersionDetail extends VersionSummary {
  labels: string[];
  heads: Record<string, string[]>;
  training_config: Record<string, unknown>;
  preprocessing?: Record<string, unknown>;
  dataset_fingerprint?: string | null;
  evaluation: Evaluation | null;
}

export interface ActivateAnswer {
  model: ModelRef;
  previous: string | null;
  serving: string[];
}

export interface StoredPrediction {
  model: ModelRef;
  label: string;
  score: number;
  predictions: ScoredLabel[];
  attributes: Record<string, ScoredLabel>;
  cached: boolean;
  created_at: string;
}

export interface StoredLabel {
  id: number;
  label: string | null;
  attributes: Record<string, string>;
  source: string;
  created_by: string | null;
  created_at: string;
}

export interface StoredImage {
  id: string;
  content_type: string;
  bytes: number;
  width: number;
  height: number;
  uploaded_by: string | null;
  created_at: string;
  prediction: StoredPrediction | null;
  label?: StoredLabel | null;
}

export interface ImageDetail extends StoredImage {
  predictions: StoredPrediction[];
  labels: StoredLabel[];
}

export interface ImagePage {
  items: StoredImage[];
  total: number;
  limit: number;
  offset: number;
  next_offset: number | null;
}

export interface LabelIn {
  label?: string;
  attributes?: Record<string, string>;
  new_label?: boolean;
}

export interface LabelOut extends StoredLabel {
  image: string;
}

export interface DeletedOut {
  id: string;
  deleted: Record<string, number>;
}

export type ReviewStrategy = "least_confident" | "margin" | "disagreement";

export interface RankedPrediction {
  model: ModelRef;
  label: string;
  score: number;
  predictions: ScoredLabel[];
  created_at: string;
}

export interface ReviewItem {
  id: string;
  created_at: string;
  value: number;
  prediction: RankedPrediction;
  challenger?: RankedPrediction | null;
}

export interface ReviewPage {
  strategy: ReviewStrategy;
  model: string;
  champion: string | null;
  items: ReviewItem[];
  total: number;
  limit: number;
  next_cursor: string | null;
}

export interface HistogramBin {
  lower: number;
  upper: number;
  count: number;
}

export interface AgreementCounts {
  labelled: number;
  agreed: number;
  agreement: number | null;
}

export interface Stats {
  images: Record<string, number>;
  predictions: {
    total: number;
    cached: number;
    cache_hit_ratio: number | null;
    per_label: Record<string, number>;
    per_model: Record<string, number>;
    per_day: Record<string, number>;
    confidence_histogram?: HistogramBin[];
  };
  labels: {
    total: number;
    per_label: Record<string, number>;
    per_source: Record<string, number>;
  };
  feedback?: { per_model: Record<string, AgreementCounts> };
  since?: string | null;
  until?: string | null;
}

export type EvaluationOutcome = "promoted" | "canary" | "rejected" | "failed";

export interface EvaluationReport {
  id: number;
  model_name: string;
  champion_version: string | null;
  /** Null when training itself failed. */
  challenger_version: string | null;
  outcome: EvaluationOutcome;
  primary_metric: string | null;
  scores: Record<string, unknown>;
  reasons: string[];
  error: string | null;
  actor: string | null;
  started_at: string;
  finished_at: string | null;
  dataset?: Record<string, unknown>;
  golden_set?: string | null;
  report: Record<string, unknown>;
}

export interface EvaluationList {
  items: EvaluationReport[];
  limit?: number;
  next_before?: number | null;
}

export interface RolloutStats {
  requests: number | null;
  errors: number | null;
  error_rate: number | null;
  mean_confidence: number | null;
  p95_latency_ms: number | null;
  labelled: number | null;
  agreement: number | null;
}

export type RolloutState = "running" | "promoted" | "rolled_back";

export interface Rollout {
  id: number;
  model_name: string;
  champion_version: string;
  challenger_version: string;
  share: number;
  state: RolloutState;
  started_at: string;
  ended_at: string | null;
  started_by: string | null;
  ended_by: string | null;
  reason: string | null;
  last_stats: {
    champion: RolloutStats | null;
    challenger: RolloutStats | null;
    /** The rollout policy's last verdict (wait, promote, roll back…) and why. */
    verdict?: string | null;
    reasons?: string[];
    at?: string | null;
  } | null;
  policy?: Record<string, unknown>;
  evaluation_id?: number | null;
}

export interface RolloutList {
  model?: string;
  running: Rollout | null;
  items: Rollout[];
}
